"""Ordering benchmark: labels saved by serving tasks in a better order (issue 17).

An offline pool-based simulation on the realistic scene set (no Label Studio): a fixed pool of
scenes and a held-out test set; every strategy starts from the same random labeled set and the
same first model (ssdlite320_mobilenet_v2 from its ImageNet backbone), then runs rounds: take
the next batch by the strategy, label it (ground truth), train warm-started from the previous
round (as the product's rounds do), measure AP50 on the test set. Strategies:

- `random`: a random order (the seed's);
- `id`: task id order, Label Studio's default;
- `mean-score`: the mean pre-label box score ascending, today's prediction score;
- `detection`: backend/serving/ordering.py with the default weights (no flip forward);
- `detection-flip`: the same with ORDER_WEIGHT_FLIP=0.5 (a second forward per image).

Per round: AP50/AP, and the pre-label acceptance share of the batch taken: the share of its
ground-truth boxes that the current model finds (same class, IoU >= 0.5, score >= 0.5). Per
strategy: labeled tasks needed to reach each AP50 target (linear between rounds). Writes
benchmarks/results/ordering.json and ordering.png; prints the JSON.

    python benchmarks/ordering.py [--seeds 0,1] [--pool 400] [--test 100] [--start 40]
        [--batch 40] [--rounds 3] [--first-steps 300] [--steps 150] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.labelstudio.boxes import task_score  # noqa: E402
from backend.model.backbones import build_imagenet_model  # noqa: E402
from backend.model.engine import (  # noqa: E402
    DetectionDataset,
    TrainConfig,
    evaluation_set,
    predict,
    train_steps,
)
from backend.model.evaluation import ImagePrediction, coco_metrics, match_detections  # noqa: E402
from backend.serving import ordering  # noqa: E402
from benchmarks.imagenet import imagenet_torch_home, offline_weights_file  # noqa: E402
from benchmarks.realistic.items import MODEL_CLASS_NAMES, scene_items  # noqa: E402
from benchmarks.report import emit, machine  # noqa: E402

ARCH = "ssdlite320_mobilenet_v2"
CLASS_NAMES = MODEL_CLASS_NAMES
TEST_FIRST = 100_000
SHOWN = 0.5  # the score a pre-label needs to be shown (SCORE_THRESHOLD)
TARGETS = (0.15, 0.2, 0.25, 0.3)
STRATEGIES = ("random", "id", "mean-score", "detection", "detection-flip")
FLIP_WEIGHTS = ordering.OrderWeights(flip=0.5)
RESULTS = Path(__file__).resolve().parent / "results"


def say(text: str) -> None:
    print(f"[ordering] {text}", file=sys.stderr, flush=True)


def acceptance(predictions: list[ImagePrediction], truths: list) -> float | None:
    """Share of ground-truth boxes a shown pre-label gets right (class, IoU >= 0.5)."""
    shown = [ImagePrediction(p.boxes[p.scores >= SHOWN], p.scores[p.scores >= SHOWN],
                             p.labels[p.scores >= SHOWN]) for p in predictions]
    total = sum(len(t.boxes) for t in truths)
    hits = sum(int(match_detections(truths, shown, k)[1].sum())
               for k in range(1, len(CLASS_NAMES)))
    return round(hits / total, 4) if total else None


def train_counts(items: list, labeled: list[int]) -> dict[int, int]:
    counts = {k: 0 for k in range(1, len(CLASS_NAMES))}
    for index in labeled:
        for label in items[index][0].labels:
            counts[int(label)] += 1
    return counts


def next_batch(strategy: str, model: torch.nn.Module, pool: list, images: list,
               labeled: list[int], size: int, rng: random.Random) -> tuple[list[int], float]:
    """The pool indices the strategy labels next, and the seconds its scoring took."""
    taken = set(labeled)
    left = [i for i in range(len(pool)) if i not in taken]
    if strategy == "random":
        return rng.sample(left, min(size, len(left))), 0.0
    if strategy == "id":
        return left[:size], 0.0
    started = time.perf_counter()
    found = predict(model, [images[i] for i in left], "cpu")
    if strategy == "mean-score":
        scores = [task_score([float(s) for s in p.scores if s >= SHOWN]) for p in found]
        order = sorted(range(len(left)), key=lambda k: (scores[k], left[k]))
        return [left[k] for k in order[:size]], time.perf_counter() - started
    weights = FLIP_WEIGHTS if strategy == "detection-flip" else ordering.OrderWeights()
    flips = [0.0] * len(left)
    if weights.flip:
        flipped = predict(model, [images[i].flip(-1) for i in left], "cpu")
        flips = [ordering.flip_instability(
            p.boxes, p.scores, p.labels, ordering.unflip(f.boxes, images[i].shape[-1]),
            f.scores, f.labels) for p, f, i in zip(found, flipped, left, strict=True)]
    rare = ordering.class_rarity(train_counts(pool, labeled), len(CLASS_NAMES))
    signals = [ordering.task_signals(p.scores, p.labels, rare, weights.floor, flip)
               for p, flip in zip(found, flips, strict=True)]
    value = ordering.priorities(signals, weights)
    order = sorted(range(len(left)), key=lambda k: (-value[k], left[k]))
    return [left[k] for k in order[:size]], time.perf_counter() - started


def evaluate(model: torch.nn.Module, test: tuple[list, list]) -> dict[str, float]:
    metrics = coco_metrics(test[1], predict(model, test[0], "cpu"), CLASS_NAMES)
    return {"ap50": round(metrics.ap50, 4), "ap": round(metrics.ap, 4)}


def run_strategy(strategy: str, first: torch.nn.Module, start: list[int], pool: list,
                 images: list, truths: list, test: tuple, args: argparse.Namespace,
                 seed: int) -> dict[str, Any]:
    """Rounds of one strategy from the shared first model; its curve and acceptance."""
    model = copy.deepcopy(first)
    labeled, rng = list(start), random.Random(seed)
    rounds: list[dict[str, Any]] = []
    for round_index in range(args.rounds):
        batch, score_s = next_batch(strategy, model, pool, images, labeled, args.batch, rng)
        found = predict(model, [images[i] for i in batch], "cpu")
        accepted = acceptance(found, [truths[i] for i in batch])
        labeled += batch
        config = TrainConfig(steps=args.steps, batch_size=4, seed=seed * 100 + round_index + 1)
        started = time.perf_counter()
        train_steps(model, DetectionDataset([pool[i] for i in labeled], train=True), config)
        entry = {"labeled": len(labeled), **evaluate(model, test),
                 "batch_acceptance": accepted, "batch_boxes": sum(len(truths[i].boxes)
                                                                  for i in batch),
                 "score_s": round(score_s, 1),
                 "train_s": round(time.perf_counter() - started, 1)}
        rounds.append(entry)
        say(f"seed {seed} {strategy}: {entry}")
    return {"rounds": rounds}


def labels_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """Labeled tasks at which the curve first reaches `target`, linear between points."""
    for (n0, a0), (n1, a1) in zip(curve, curve[1:], strict=False):
        if a0 >= target:
            return float(n0)
        if a1 >= target:
            return round(n0 + (n1 - n0) * (target - a0) / (a1 - a0), 1)
    return float(curve[0][0]) if curve and curve[0][1] >= target else None


def run_seed(seed: int, pool: list, test: tuple, args: argparse.Namespace) -> dict[str, Any]:
    images, truths = evaluation_set(pool)
    start = random.Random(seed).sample(range(len(pool)), args.start)
    torch.manual_seed(seed)
    first, _ = build_imagenet_model(ARCH, len(CLASS_NAMES))
    started = time.perf_counter()
    train_steps(first, DetectionDataset([pool[i] for i in start], train=True),
                TrainConfig(steps=args.first_steps, batch_size=4, seed=seed * 100))
    base = {"labeled": args.start, **evaluate(first, test)}
    say(f"seed {seed}: first model {base} in {time.perf_counter() - started:.0f} s")
    result: dict[str, Any] = {"seed": seed, "first_model": base, "strategies": {}}
    for strategy in args.strategies.split(","):
        runs = run_strategy(strategy, first, start, pool, images, truths, test, args, seed)
        curve = [(base["labeled"], base["ap50"])] + [(r["labeled"], r["ap50"])
                                                    for r in runs["rounds"]]
        runs["labels_to_reach_ap50"] = {str(t): labels_to_reach(curve, t) for t in TARGETS}
        result["strategies"][strategy] = runs
    return result


def summary(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per strategy: mean AP50 per round, mean acceptance, and mean final AP50 over seeds."""
    out: dict[str, Any] = {}
    for strategy in seeds[0]["strategies"]:
        runs = [s["strategies"][strategy]["rounds"] for s in seeds]
        out[strategy] = {
            "labeled": [r["labeled"] for r in runs[0]],
            "mean_ap50": [round(float(np.mean([run[k]["ap50"] for run in runs])), 4)
                          for k in range(len(runs[0]))],
            "mean_batch_acceptance": [
                round(float(np.mean([run[k]["batch_acceptance"] or 0 for run in runs])), 4)
                for k in range(len(runs[0]))],
            "labels_to_reach_ap50": {str(t): [s["strategies"][strategy]["labels_to_reach_ap50"]
                                              [str(t)] for s in seeds] for t in TARGETS}}
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    start = report["seeds"][0]["first_model"]
    first_ap50 = float(np.mean([s["first_model"]["ap50"] for s in report["seeds"]]))
    for strategy, row in report["summary"].items():
        left.plot([start["labeled"], *row["labeled"]], [first_ap50, *row["mean_ap50"]],
                  marker="o", label=strategy)
        right.plot(row["labeled"], row["mean_batch_acceptance"], marker="o", label=strategy)
    left.set(xlabel="labeled tasks", ylabel="AP50 (held-out scenes)",
             title=f"AP50 by order, mean of {len(report['seeds'])} seed(s)")
    right.set(xlabel="labeled tasks after the batch", ylabel="share of boxes pre-labeled right",
              title="Pre-label acceptance of the batch served")
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--pool", type=int, default=400)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--start", type=int, default=40)
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--first-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--out", type=Path, default=RESULTS / "ordering.json")
    args = parser.parse_args()
    wheel_file = offline_weights_file()
    torch.set_num_threads(args.threads)
    pool = scene_items(range(args.pool))
    test = evaluation_set(scene_items(range(TEST_FIRST, TEST_FIRST + args.test)))
    report: dict[str, Any] = {
        "benchmark": "ordering", "arch": ARCH, "scenes": "realistic standard, set seed 0",
        "pool": args.pool, "test": args.test, "start": args.start, "batch": args.batch,
        "rounds": args.rounds, "first_steps": args.first_steps, "steps": args.steps,
        "shown_threshold": SHOWN, "detection_weights": vars(ordering.OrderWeights()),
        "detection_flip_weights": vars(FLIP_WEIGHTS), "machine": machine(), "seeds": []}
    with imagenet_torch_home(wheel_file):
        for seed in (int(s) for s in args.seeds.split(",")):
            report["seeds"].append(run_seed(seed, pool, test, args))
            report["summary"] = summary(report["seeds"])
            emit(report, args.out)  # after each seed, so a stopped run keeps what it had
            plot(report, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
