"""Label-error review benchmark: known noise injected into realistic labels, then found again?

Realistic scenes (benchmarks/realistic, standard preset) get their ground truth corrupted at a
stated rate per box, each corruption one of: the box dropped, its class swapped for another,
or the box shifted by 30-60 % of its size. Out-of-sample predictions come as the product gets
them: two folds, each trained on its own noisy labels (ImageNet backbone, the product's
`train_steps`, thresholds calibrated on a fifth of the fold held out, as a round does) and
predicting the other fold. Every image is then scored by the product's own
`backend.model.label_errors.task_issues`, and ranked.

Reported: precision and recall of the truly corrupted tasks among the top K, beside a random
ranking (its expected precision is the corrupted share, its expected recall K/N); recall per
kind of corruption at K = the number of corrupted tasks; and precision/recall of the tasks
REVIEW_MIN_ISSUE would flag at a few thresholds.

    python benchmarks/review.py [--images 240] [--noise 0.1] [--steps 400] [--seed 0]
                                [--min-score 0.5] [--cache DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.media.images import LoadedImage  # noqa: E402
from backend.model.backbones import build_imagenet_model  # noqa: E402
from backend.model.dataset import Sample  # noqa: E402
from backend.model.engine import (  # noqa: E402
    DetectionDataset,
    TrainConfig,
    evaluation_set,
    predict,
    train_steps,
)
from backend.model.evaluation import coco_metrics  # noqa: E402
from backend.model.label_errors import issue_score, task_issues  # noqa: E402
from backend.model.training import calibrate  # noqa: E402
from benchmarks import realistic  # noqa: E402
from benchmarks.imagenet import imagenet_torch_home, offline_weights_file  # noqa: E402
from benchmarks.report import emit, machine  # noqa: E402

ARCH = "ssdlite320_mobilenet_v2"
NAMES = ["__background__", *realistic.CLASS_NAMES]
CORRUPTIONS = ("dropped", "swapped", "shifted")
Items = list[tuple[Sample, LoadedImage]]


def say(text: str) -> None:
    print(f"[review] {text}", file=sys.stderr, flush=True)


def corrupt(boxes: np.ndarray, labels: np.ndarray, rate: float, size: tuple[int, int],
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The noisy labels of one image and the corruptions made."""
    kept_boxes, kept_labels, made = [], [], []
    for box, label in zip(boxes, labels, strict=True):
        if rng.random() >= rate:
            kept_boxes.append(box)
            kept_labels.append(label)
            continue
        kind = CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
        made.append(kind)
        if kind == "dropped":
            continue
        if kind == "swapped":
            other = int(rng.integers(1, len(NAMES) - 1))
            kept_labels.append(other if other < label else other + 1)
            kept_boxes.append(box)
            continue
        w, h = box[2] - box[0], box[3] - box[1]
        dx, dy = rng.uniform(0.3, 0.6, 2) * (w, h) * rng.choice((-1, 1), 2)
        moved = box + np.array([dx, dy, dx, dy])
        moved[[0, 2]] = np.clip(moved[[0, 2]], 0, size[0])
        moved[[1, 3]] = np.clip(moved[[1, 3]], 0, size[1])
        kept_boxes.append(moved)
        kept_labels.append(label)
    return (np.array(kept_boxes, np.float32).reshape(-1, 4), np.array(kept_labels, np.int64),
            made)


def noisy_items(count: int, rate: float, seed: int) -> tuple[Items, list[list[str]]]:
    rng = np.random.default_rng(seed)
    items, truth = [], []
    for index in range(count):
        scene = realistic.make_scene(index, "standard", seed)
        boxes = np.array(scene.boxes, np.float32).reshape(-1, 4)
        labels = np.array([NAMES.index(label) for label in scene.labels], np.int64)
        boxes, labels, made = corrupt(boxes, labels, rate, scene.image.size, rng)
        items.append((Sample(index, "image", f"scene-{index:05d}.jpg", boxes, labels, False),
                      LoadedImage(scene.image)))
        truth.append(made)
    return items, truth


def fold_predictions(train: Items, score: Items, steps: int, seed: int,
                     cache: Path | None) -> tuple[list[Any], dict[str, float | None], float]:
    """Train on `train` (a fifth held out to calibrate); predict the other fold's images.
    (predictions, thresholds, AP50 against the noisy labels); kept in `cache` when given, so
    the scoring can be studied again without training."""
    if cache is not None and cache.exists():
        with cache.open("rb") as file:
            return pickle.load(file)  # noqa: S301 - our own file, written below
    torch.manual_seed(seed)
    model, _ = build_imagenet_model(ARCH, len(NAMES))
    cut = max(5, len(train) // 5)
    fit, val = train[cut:], train[:cut]
    train_steps(model, DetectionDataset(fit, train=True),
                TrainConfig(steps=steps, batch_size=4, seed=seed), None)
    images, truths = evaluation_set(val)
    thresholds, _ = calibrate(truths, predict(model, images, "cpu"), NAMES, 0.9, len(fit), [])
    images, truths = evaluation_set(score)
    predictions = predict(model, images, "cpu")
    found = (predictions, thresholds, coco_metrics(truths, predictions, NAMES).ap50)
    if cache is not None:
        with cache.open("wb") as file:
            pickle.dump(found, file)
    return found


def fold_scores(score: Items, predictions: list[Any], thresholds: dict[str, float | None],
                min_score: float) -> list[float]:
    _, truths = evaluation_set(score)
    return [issue_score(task_issues(t, p, NAMES, thresholds, min_score))
            for t, p in zip(truths, predictions, strict=True)]


def at_k(order: np.ndarray, noisy: np.ndarray, k: int) -> dict[str, float]:
    hits = int(noisy[order[:k]].sum())
    return {"precision": round(hits / k, 4), "recall": round(hits / max(1, noisy.sum()), 4),
            "random_precision": round(float(noisy.mean()), 4),
            "random_recall": round(k / len(noisy), 4)}


def ranking_report(scores: np.ndarray, truth: list[list[str]]) -> dict[str, Any]:
    noisy = np.array([bool(made) for made in truth])
    order = np.argsort(-scores, kind="stable")
    n_noisy = int(noisy.sum())
    ks = sorted({k for k in (10, 25, 50, 100, n_noisy) if 0 < k <= len(scores)})
    top = set(order[:n_noisy].tolist())
    per_kind = {}
    for kind in CORRUPTIONS:
        having = [i for i, made in enumerate(truth) if kind in made]
        per_kind[kind] = {"tasks": len(having),
                          "recall_at_k_noisy": round(sum(i in top for i in having)
                                                     / max(1, len(having)), 4)}
    flagged = {}
    for cut in (0.2, 0.3, 0.5):
        chosen = scores >= cut
        hits = int((chosen & noisy).sum())
        flagged[str(cut)] = {"flagged": int(chosen.sum()),
                             "precision": round(hits / max(1, chosen.sum()), 4),
                             "recall": round(hits / max(1, n_noisy), 4)}
    return {"tasks": len(scores), "corrupted_tasks": n_noisy,
            "at_k": {str(k): at_k(order, noisy, k) for k in ks},
            "recall_by_kind_at_k_noisy": per_kind, "flagged_at_min_issue": flagged}


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--noise", type=float, default=0.1, help="share of boxes corrupted")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-score", type=float, default=0.5, help="REVIEW_MIN_SCORE")
    parser.add_argument("--cache", type=Path, help="folder keeping each fold's predictions")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    wheel_file = offline_weights_file()
    torch.set_num_threads(args.threads)
    items, truth = noisy_items(args.images, args.noise, args.seed)
    half = len(items) // 2
    folds = (items[:half], items[half:])
    report: dict[str, Any] = {"benchmark": "review", "arch": ARCH, "images": args.images,
                              "noise_per_box": args.noise, "steps": args.steps,
                              "seed": args.seed, "min_score": args.min_score,
                              "machine": machine(), "folds": []}
    scores: list[float] = []
    with imagenet_torch_home(wheel_file):
        for index, (train, score) in enumerate((folds, folds[::-1])):
            say(f"fold {index + 1}: {args.steps} steps on {len(train)} noisy images")
            cache = args.cache / (f"review-{args.images}-{args.noise}-{args.steps}-"
                                  f"{args.seed}-{index}.pkl") if args.cache else None
            predictions, thresholds, ap50 = fold_predictions(train, score, args.steps,
                                                             args.seed + index, cache)
            fold = fold_scores(score, predictions, thresholds, args.min_score)
            report["folds"].append({
                "calibrated_classes": sum(v is not None for v in thresholds.values()),
                "ap50_on_noisy_labels": round(ap50, 4)})
            scores = fold + scores if index else scores + fold
    report.update(ranking_report(np.array(scores), truth))
    emit(report, args.out)


if __name__ == "__main__":
    run()
