"""Learning curves on the realistic scenes: held-out AP50 against labeled tasks, side by side.

Each start (architecture x weights) is trained at each label count the same way a round trains
(`train_steps`, batch 4, a fifth of the labeled tasks held out as a round would, so a count of
60 trains on 48 images), and measured on the same test scenes nobody trained on: AP50, AP, and
AP50 per class with the long tail apart (benchmarks/realistic: classes ranked by frequency;
`common` the 8 most common, `rare` the 8 rarest, the rarest drawn 1/15 as often as the
first). Starts: `ssdlite320_mobilenet_v2:imagenet` (the offline ImageNet file,
MODEL_WEIGHTS=imagenet), and either architecture `:scratch`. Predictions are kept in --cache,
so benchmarks/calibration.py reuses the ImageNet models without training them again.

    python benchmarks/curves.py [--starts ssdlite320_mobilenet_v2:imagenet,...]
        [--labels 30,60,120,240] [--scratch-labels 60,240] [--steps 500] [--seed 0]
        [--preset standard] [--test 300] [--cache DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.model.architectures import build_untrained_model  # noqa: E402
from backend.model.backbones import build_imagenet_model  # noqa: E402
from backend.model.engine import (  # noqa: E402
    DetectionDataset,
    TrainConfig,
    evaluation_set,
    predict,
    train_steps,
)
from backend.model.evaluation import coco_metrics  # noqa: E402
from benchmarks import realistic  # noqa: E402
from benchmarks.imagenet import imagenet_torch_home, offline_weights_file  # noqa: E402
from benchmarks.realistic.items import MODEL_CLASS_NAMES, scene_items  # noqa: E402
from benchmarks.report import emit, machine  # noqa: E402

CLASS_NAMES = MODEL_CLASS_NAMES
COMMON, RARE = realistic.CLASS_NAMES[:8], realistic.CLASS_NAMES[-8:]
POOL_START, TEST_START = 10_000, 20_000  # scene indices: training scenes count from 0
VALIDATION_SHARE = 0.2  # VALIDATION_FRACTION's default
DEFAULT_STARTS = ("ssdlite320_mobilenet_v2:imagenet", "ssdlite320_mobilenet_v2:scratch",
                  "ssdlite320_mobilenet_v3_large:scratch")


def say(text: str) -> None:
    print(f"[curves] {text}", file=sys.stderr, flush=True)


def starting_model(start: str) -> torch.nn.Module:
    arch, weights = start.split(":")
    if weights == "imagenet":
        return build_imagenet_model(arch, len(CLASS_NAMES))[0]
    if weights == "scratch":
        return build_untrained_model(arch, len(CLASS_NAMES))
    raise SystemExit(f"unknown start {start!r}: ARCH:imagenet or ARCH:scratch")


def trained_predictions(start: str, labels: int, steps: int, seed: int, preset: str,
                        pool: int, test: int, cache: Path | None) -> dict[str, Any]:
    """Train `start` on the first 80 % of `labels` scenes; its predictions on the pool
    (for calibration draws) and the test scenes, with the test AP50. Cached."""
    name = f"curves-{start.replace(':', '-')}-{preset}-{labels}-{steps}-{seed}-{pool}-{test}.pkl"
    path = cache / name if cache else None
    if path is not None and path.exists():
        with path.open("rb") as file:
            return pickle.load(file)  # noqa: S301 - our own file, written below
    train = scene_items(range(round(labels * (1 - VALIDATION_SHARE))), preset)
    torch.manual_seed(seed)
    model = starting_model(start)
    say(f"{start}, {labels} labels: {steps} steps on {len(train)} images")
    train_steps(model, DetectionDataset(train, train=True),
                TrainConfig(steps=steps, batch_size=4, seed=seed), None)
    found: dict[str, Any] = {}
    for part, first, count in (("pool", POOL_START, pool), ("test", TEST_START, test)):
        images, truths = evaluation_set(scene_items(range(first, first + count), preset))
        found[part] = (truths, predict(model, images, "cpu"))
    if path is not None:
        with path.open("wb") as file:
            pickle.dump(found, file)
    return found


def measured(found: dict[str, Any]) -> dict[str, Any]:
    metrics = coco_metrics(*found["test"], CLASS_NAMES)
    per_class = {name: (entry or {}).get("ap50") for name, entry in metrics.per_class.items()}

    def mean_of(names: tuple[str, ...]) -> float | None:
        values = [per_class[n] for n in names if per_class.get(n) is not None]
        return round(statistics.fmean(values), 4) if values else None

    return {"ap50": round(metrics.ap50, 4), "ap": round(metrics.ap, 4),
            "ap50_common": mean_of(COMMON), "ap50_rare": mean_of(RARE),
            "ap50_per_class": {n: None if v is None else round(v, 4)
                               for n, v in per_class.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", default=",".join(DEFAULT_STARTS))
    parser.add_argument("--labels", default="30,60,120,240")
    parser.add_argument("--scratch-labels", help="label counts of the :scratch starts "
                                                 "(default --labels)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=sorted(realistic.PRESETS), default="standard")
    parser.add_argument("--pool", type=int, default=150)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, help="folder keeping each model's predictions")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"benchmark": "curves", "steps": args.steps, "seed": args.seed,
                              "scenes": f"realistic {args.preset} seed 0",
                              "test_images": args.test, "common": COMMON, "rare": RARE,
                              "machine": machine(), "curves": {}}
    with imagenet_torch_home(offline_weights_file()):
        for start in args.starts.split(","):
            counts = args.scratch_labels if start.endswith(":scratch") and args.scratch_labels \
                else args.labels
            for labels in (int(n) for n in counts.split(",")):
                found = trained_predictions(start, labels, args.steps, args.seed, args.preset,
                                            args.pool, args.test, args.cache)
                point = {"labels": labels, "train_images":
                         round(labels * (1 - VALIDATION_SHARE)), **measured(found)}
                report["curves"].setdefault(start, []).append(point)
                say(f"{start} at {labels}: AP50 {point['ap50']} (common "
                    f"{point['ap50_common']}, rare {point['ap50_rare']})")
    emit(report, args.out)


if __name__ == "__main__":
    main()
