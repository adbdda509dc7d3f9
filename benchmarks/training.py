"""Training benchmark: images/s of the project's training loop vs a bare torchvision loop.

Trains the default architecture (SSDlite320) from scratch (weights=None, nothing downloaded)
on generated scenes held in memory, through the project's own `train_steps` and
`DetectionDataset` (augmentation, AdamW, LR schedule, gradient clipping, AMP on CUDA), and,
in the same run on the same images in the same order, through a bare loop: images converted
to tensors once, `sum(model(images, targets).values())`, backward, AdamW step. After a few
warm-up steps, both time the same number of steps at the same batch size and thread count,
in --repeats alternating pairs (shared machines are noisy); each loop is reported by its
fastest repeat, and their images/s ratio is our loop's speed relative to the bare loop.
Also times the dataset alone (PIL to tensor, augmentation, collate), the part of our loop
that runs on the critical path (DataLoader with num_workers=0).

    python benchmarks/training.py [--steps 30] [--warmup 5] [--repeats 3] [--images 64]
                                  [--batch-size 4] [--threads 2] [--device cpu|cuda]
                                  [--out FILE]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import RandomSampler
from torchvision.transforms.functional import pil_to_tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.demo.scenes import SHAPES, make_scene  # noqa: E402
from backend.media.images import LoadedImage  # noqa: E402
from backend.model.architectures import DEFAULT_ARCH, build_untrained_model  # noqa: E402
from backend.model.dataset import Sample  # noqa: E402
from backend.model.engine import DetectionDataset, TrainConfig, train_steps  # noqa: E402
from benchmarks.report import emit, machine  # noqa: E402

CLASS_NAMES = ["__background__", *SHAPES]

Items = list[tuple[Sample, LoadedImage]]


def scene_items(count: int, first_seed: int = 0) -> Items:
    """`count` generated scenes as the (Sample, LoadedImage) pairs a training round builds."""
    items = []
    for seed in range(first_seed, first_seed + count):
        scene = make_scene(seed)
        sample = Sample(task_id=seed, data_key="image", reference=f"scene-{seed:05d}.jpg",
                        boxes=np.array(scene.boxes, np.float32).reshape(-1, 4),
                        labels=np.array([CLASS_NAMES.index(label) for label in scene.labels],
                                        np.int64),
                        validation=False)
        items.append((sample, LoadedImage(scene.image)))
    return items


def batch_order(count: int, config: TrainConfig) -> list[list[int]]:
    """The image indices of every batch, exactly as `train_steps` samples them."""
    sampler = RandomSampler(range(count), replacement=True,
                            num_samples=config.steps * config.batch_size,
                            generator=torch.Generator().manual_seed(config.seed))
    order = list(sampler)
    return [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def summary(stamps: list[float], warmup: int, batch_size: int) -> dict[str, Any]:
    """Throughput over the steps after `warmup`, from one timestamp per finished step."""
    window = stamps[warmup - 1:]
    per_step = [b - a for a, b in zip(window, window[1:], strict=False)]
    seconds = window[-1] - window[0]
    return {"images_per_s": round(len(per_step) * batch_size / seconds, 3),
            "s_per_step_p50": round(statistics.median(per_step), 4),
            "s_per_step_max": round(max(per_step), 4), "timed_s": round(seconds, 3)}


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeats of one loop, headed by the fastest: load from other processes only ever slows
    a run down, so the best repeat is the one nearest the loop's own cost (as in timeit)."""
    best = max(runs, key=lambda run: run["images_per_s"])
    combined: dict[str, Any] = {
        "images_per_s": best["images_per_s"],
        "s_per_step_p50": best["s_per_step_p50"],
        "images_per_s_median": round(statistics.median(run["images_per_s"] for run in runs), 3),
        "images_per_s_repeats": [run["images_per_s"] for run in runs],
        "s_per_step_p50_repeats": [run["s_per_step_p50"] for run in runs],
        "s_per_step_max_repeats": [run["s_per_step_max"] for run in runs],
        "timed_s_repeats": [run["timed_s"] for run in runs],
    }
    if "skipped_steps" in best:
        combined["skipped_steps"] = sum(run["skipped_steps"] for run in runs)
    if "peak_gpu_mem_mb" in best:
        combined["peak_gpu_mem_mb"] = max(run["peak_gpu_mem_mb"] for run in runs)
    for key in ("total_s_with_setup", "last_loss"):
        if key in best:
            combined[key] = best[key]
    return combined


def engine_run(items: Items, config: TrainConfig, warmup: int) -> dict[str, Any]:
    """The project's loop: `train_steps` on a training `DetectionDataset`, timed per step."""
    model = build_untrained_model(DEFAULT_ARCH, len(CLASS_NAMES))
    device = torch.device(config.device)
    stamps: list[float] = []
    losses: list[float] = []

    def progress(step: int, total: int, loss: float) -> None:
        # train_steps calls this after loss.item(), so on CUDA the step has finished.
        stamps.append(time.perf_counter())
        losses.append(loss)

    sync(device)
    started = time.perf_counter()
    curve = train_steps(model, DetectionDataset(items, train=True), config, progress)
    sync(device)
    total = time.perf_counter() - started
    result = summary(stamps, warmup, config.batch_size)
    result.update({"total_s_with_setup": round(total, 3), "last_loss": round(losses[-1], 4),
                   "skipped_steps": curve["skipped_steps"]})
    return result


def bare_run(items: Items, config: TrainConfig, warmup: int) -> dict[str, Any]:
    """A minimal torchvision loop on the same images (tensors made once), same batches."""
    device = torch.device(config.device)
    use_amp = config.amp and device.type == "cuda"
    images = [pil_to_tensor(loaded.image).to(torch.float32) / 255.0 for _, loaded in items]
    targets = [{"boxes": torch.as_tensor(sample.boxes).reshape(-1, 4),
                "labels": torch.as_tensor(sample.labels, dtype=torch.int64)}
               for sample, _ in items]
    torch.manual_seed(config.seed)
    model = build_untrained_model(DEFAULT_ARCH, len(CLASS_NAMES)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    stamps: list[float] = []
    loss = torch.zeros(())
    for batch in batch_order(len(items), config):
        batch_images = [images[i].to(device) for i in batch]
        batch_targets = [{k: v.to(device) for k, v in targets[i].items()} for i in batch]
        with torch.autocast(device_type=device.type, enabled=use_amp):
            loss = sum(model(batch_images, batch_targets).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        sync(device)
        stamps.append(time.perf_counter())
    result = summary(stamps, warmup, config.batch_size)
    result["last_loss"] = round(float(loss.item()), 4)
    return result


def data_only(items: Items, config: TrainConfig, warmup: int) -> dict[str, Any]:
    """The dataset alone over the timed batches: PIL to tensor, augmentation, collate."""
    dataset = DetectionDataset(items, train=True)
    torch.manual_seed(config.seed)
    batches = batch_order(len(items), config)[warmup:]
    started = time.perf_counter()
    for batch in batches:
        tuple(zip(*[dataset[i] for i in batch], strict=True))
    seconds = time.perf_counter() - started
    return {"s_per_step": round(seconds / len(batches), 4), "steps": len(batches)}


def cuda_block(run: Callable[[], dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """`run()`, with the peak GPU memory it allocated when on CUDA."""
    if device.type != "cuda":
        return run()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    result = run()
    result["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps, after the warm-up")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=3,
                        help="engine and bare runs each, alternating which goes first")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.steps < 2 or args.warmup < 1 or args.batch_size < 2 or args.repeats < 1:
        parser.error("need --steps >= 2, --warmup >= 1, --repeats >= 1 and "
                     "--batch-size >= 2 (BatchNorm)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device cuda: torch.cuda.is_available() is False (torch "
                         f"{torch.__version__}, built for CUDA {torch.version.cuda}); "
                         "run with --device cpu or on a machine with a CUDA GPU")

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = TrainConfig(steps=args.warmup + args.steps, batch_size=args.batch_size,
                         device=args.device)
    use_amp = config.amp and device.type == "cuda"
    info = {**machine(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": args.device}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)

    items = scene_items(args.images)
    report: dict[str, Any] = {
        "machine": info, "arch": DEFAULT_ARCH, "start": "scratch", "images": args.images,
        "image_size": [items[0][1].width, items[0][1].height], "batch_size": args.batch_size,
        "warmup_steps": args.warmup, "timed_steps": args.steps, "repeats": args.repeats,
        "amp": use_amp,
    }
    loops = {"engine": lambda: engine_run(items, config, args.warmup),
             "bare": lambda: bare_run(items, config, args.warmup)}
    runs: dict[str, list[dict[str, Any]]] = {"engine": [], "bare": []}
    for repeat in range(args.repeats):
        # Alternate which loop goes first, so a load change on a shared machine hits both.
        for name in ("engine", "bare") if repeat % 2 == 0 else ("bare", "engine"):
            runs[name].append(cuda_block(loops[name], device))
            if repeat == 0 and name == "engine":
                report["peak_rss_mb_after_first_engine_run"] = peak_rss_mb()
    ratios = [e["images_per_s"] / b["images_per_s"]
              for e, b in zip(runs["engine"], runs["bare"], strict=True)]
    report["engine"] = combine(runs["engine"])
    report["bare"] = combine(runs["bare"])
    report["engine_data_only"] = data_only(items, config, args.warmup)
    engine, bare = report["engine"], report["bare"]
    report["engine_vs_bare"] = {
        "images_per_s_ratio": round(engine["images_per_s"] / bare["images_per_s"], 3),
        "images_per_s_ratio_repeats": [round(ratio, 3) for ratio in ratios],
        "s_per_step_p50_overhead": round(engine["s_per_step_p50"] / bare["s_per_step_p50"]
                                         - 1.0, 3),
        "data_share_of_engine_step_p50": round(report["engine_data_only"]["s_per_step"]
                                               / engine["s_per_step_p50"], 3),
    }
    report["peak_rss_mb"] = peak_rss_mb()
    emit(report, args.out)


if __name__ == "__main__":
    main()
