"""Calibration benchmark: do pre-label thresholds set on a few validation images hold up?

A round calibrates each class's threshold on its held-out labels (a fifth of the labeled tasks:
6 images at the first round). This benchmark asks how well that works on the realistic scenes
(benchmarks/realistic, standard preset): models are trained from the offline ImageNet start at
a few label counts (the product's `train_steps`, TRAIN_STEPS and batch size), each predicts a
pool of unseen images once; then, many times over, a validation set of the size a round would
hold out is drawn from the pool, thresholds are calibrated on it with each method, and the
boxes they would show are measured on a large test set nobody calibrated on:
  - shown precision (TARGET_PRECISION is what it should be) and how often it falls more than
    0.05 under the target,
  - the share of ground-truth boxes that would arrive as correct pre-labels (same class,
    IoU >= 0.5), the assistance the labeler actually gets,
  - the classes that get a threshold at all.
Methods: `per-class` (each class on its own validation boxes, the rule before this benchmark)
and `pooled` (backend.model.evaluation.calibrate_thresholds: classes with little support lean
on the pooled curve of all classes; the product's rule now).

    python benchmarks/calibration.py [--labels 30,60,120,240] [--steps 500] [--draws 200]
        [--pool 150] [--test 300] [--seed 0] [--cache DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.model.evaluation import (  # noqa: E402
    ImagePrediction,
    ImageTruth,
    calibrate_threshold,
    calibrate_thresholds,
    coco_metrics,
    match_detections,
    shown_quality_of,
)
from benchmarks.curves import CLASS_NAMES, VALIDATION_SHARE, trained_predictions  # noqa: E402
from benchmarks.imagenet import imagenet_torch_home, offline_weights_file  # noqa: E402
from benchmarks.report import emit, machine  # noqa: E402

START = "ssdlite320_mobilenet_v2:imagenet"
TARGET = 0.9
Scored = tuple[list[ImageTruth], list[ImagePrediction]]


def say(text: str) -> None:
    print(f"[calibration] {text}", file=sys.stderr, flush=True)


def per_class_thresholds(truths: list[ImageTruth], predictions: list[ImagePrediction]
                         ) -> dict[str, float | None]:
    """The rule before this benchmark: each class on its own validation boxes."""
    return {name: calibrate_threshold(truths, predictions, k, TARGET)["threshold"]
            for k, name in enumerate(CLASS_NAMES) if k}


def pooled_thresholds(truths: list[ImageTruth], predictions: list[ImagePrediction]
                      ) -> dict[str, float | None]:
    return {name: entry["threshold"] for name, entry in
            calibrate_thresholds(truths, predictions, CLASS_NAMES, TARGET).items()}


METHODS = {"per-class": per_class_thresholds, "pooled": pooled_thresholds}


def draw_validation(pool: Scored, size: int, rng: np.random.Generator) -> Scored:
    chosen = rng.choice(len(pool[0]), size=size, replace=False)
    return [pool[0][i] for i in chosen], [pool[1][i] for i in chosen]


def evaluate(found: dict[str, Any], labels: int, draws: int, seed: int) -> dict[str, Any]:
    size = max(5, round(labels * VALIDATION_SHARE))
    rng = np.random.default_rng(seed)
    runs: dict[str, list[dict[str, Any]]] = {method: [] for method in METHODS}
    test = [match_detections(*found["test"], k) for k in range(len(CLASS_NAMES))]
    for _ in range(draws):
        validation = draw_validation(found["pool"], size, rng)
        for method, rule in METHODS.items():
            thresholds = rule(*validation)
            runs[method].append({**shown_quality_of(test, CLASS_NAMES, thresholds),
                                 "classes": sum(v is not None for v in thresholds.values())})
    report: dict[str, Any] = {"labels": labels, "validation_images": size,
                              "test_ap50": round(coco_metrics(*found["test"], CLASS_NAMES).ap50, 4)}
    for method, results in runs.items():
        precisions = [r["precision"] for r in results if r["precision"] is not None]
        report[method] = {
            "mean_shown_precision": round(statistics.fmean(precisions), 4) if precisions
            else None,
            "draws_under_target_by_0.05": round(sum(p < TARGET - 0.05 for p in precisions)
                                                / max(1, len(precisions)), 3),
            "draws_showing_nothing": sum(r["precision"] is None for r in results),
            "mean_share_correct": round(statistics.fmean(r["share_correct"] for r in results),
                                        4),
            "mean_classes_calibrated": round(statistics.fmean(r["classes"] for r in results),
                                             2)}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default="30,60,120,240")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--pool", type=int, default=150)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, help="folder keeping each model's predictions")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"benchmark": "calibration", "start": START,
                              "steps": args.steps, "target_precision": TARGET,
                              "draws": args.draws, "pool_images": args.pool,
                              "test_images": args.test, "seed": args.seed,
                              "scenes": f"realistic standard seed 0 ({len(CLASS_NAMES) - 1} "
                                        "classes)", "machine": machine(), "rounds": []}
    with imagenet_torch_home(offline_weights_file()):
        for labels in (int(n) for n in args.labels.split(",")):
            found = trained_predictions(START, labels, args.steps, args.seed, "standard",
                                        args.pool, args.test, args.cache)
            report["rounds"].append(evaluate(found, labels, args.draws, args.seed))
            say(str(report["rounds"][-1]))
    emit(report, args.out)


if __name__ == "__main__":
    main()
