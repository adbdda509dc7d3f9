"""Which unlabeled task a labeler should get next: a usefulness per task from its detections.

Four signals, each in [0, 1], higher = more useful to label (issue 17):

- uncertainty: the mean binary entropy (in bits) of the boxes scoring at least `floor`; a task
  where nothing reaches the floor counts as fully uncertain (1), as the mean-score order, which
  serves empty predictions first, also does;
- flip instability: 1 - the mean IoU of each box with its best same-class partner on the
  horizontally flipped image (both directions); it costs a second forward per image;
- diversity: greedy k-center: the distance of a task's class profile (its box scores summed per
  class, as a distribution) to the nearest task ranked before it. The profile is a cheap proxy
  for a backbone embedding: the detector's ONNX graph does not expose its feature map, so two
  images with the same classes in them count as alike whatever they look like;
- rarity: the largest `score x rarity(class)` over its boxes, where rarity is
  sqrt((fewest training boxes of a class + 1) / (this class's training boxes + 1)): 1 for the
  rarest class, small for the most common.

`priorities` combines them with weights (the ORDER_WEIGHT_* settings) into a number in [0, 1].
Pure numpy: no model, no Label Studio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.core.settings import Settings

FLIP_MATCH_FLOOR = 0.3  # boxes below this are left out of the flip comparison


@dataclass(frozen=True)
class OrderWeights:
    """How much each signal counts in a task's priority (0 = off)."""

    uncertainty: float = 1.0
    flip: float = 0.0
    diversity: float = 0.5
    rare: float = 0.5
    floor: float = 0.05  # boxes scoring less are noise, not candidates

    def total(self) -> float:
        return self.uncertainty + self.flip + self.diversity + self.rare


@dataclass(frozen=True)
class OrderOptions:
    """The detection order of one model: weights and its training boxes per class name."""

    weights: OrderWeights
    train_counts: Mapping[str, int]

    def class_weights(self, class_names: Sequence[str]) -> np.ndarray:
        return class_rarity({k: int(self.train_counts.get(name, 0))
                             for k, name in enumerate(class_names) if k > 0}
                            if self.train_counts else {}, len(class_names))


@dataclass(frozen=True)
class TaskSignals:
    """One task's signals, before diversity (which depends on the other tasks)."""

    uncertainty: float
    flip: float
    rarity: float
    profile: np.ndarray  # float [classes], sums to 1 (or all 0: nothing detected)


def binary_entropy(scores: np.ndarray) -> np.ndarray:
    """Entropy in bits of each score read as P(object): 1 at 0.5, 0 at 0 and 1."""
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-9, 1 - 1e-9)
    return np.asarray(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)))


def uncertainty(scores: np.ndarray, floor: float) -> float:
    """Mean entropy of the boxes scoring at least `floor`; 1 when none does."""
    kept = np.asarray(scores)[np.asarray(scores) >= floor]
    return float(binary_entropy(kept).mean()) if len(kept) else 1.0


def unflip(boxes: np.ndarray, width: float) -> np.ndarray:
    """Boxes found on a horizontally flipped image, in the original image's coordinates."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return np.asarray(inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12))


def _best_overlaps(a: np.ndarray, a_labels: np.ndarray, b: np.ndarray,
                   b_labels: np.ndarray) -> np.ndarray:
    if len(b) == 0:
        return np.zeros(len(a))
    overlaps = _iou_matrix(a, b) * (a_labels[:, None] == b_labels[None, :])
    return np.asarray(overlaps.max(axis=1))


def flip_instability(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                     flipped_boxes: np.ndarray, flipped_scores: np.ndarray,
                     flipped_labels: np.ndarray, floor: float = FLIP_MATCH_FLOOR) -> float:
    """1 - mean best same-class IoU between the boxes and those of the flipped image (already
    `unflip`ped), both ways; 0 when neither has a box over `floor`, 1 when only one has."""
    mine, theirs = np.asarray(scores) >= floor, np.asarray(flipped_scores) >= floor
    a, a_labels = np.asarray(boxes).reshape(-1, 4)[mine], np.asarray(labels)[mine]
    b, b_labels = np.asarray(flipped_boxes).reshape(-1, 4)[theirs], \
        np.asarray(flipped_labels)[theirs]
    if len(a) == 0 and len(b) == 0:
        return 0.0
    matched = np.concatenate([_best_overlaps(a, a_labels, b, b_labels),
                              _best_overlaps(b, b_labels, a, a_labels)])
    return float(1.0 - matched.mean())


def class_rarity(train_counts: Mapping[int, int], classes: int) -> np.ndarray:
    """sqrt((fewest + 1) / (count + 1)) per class index; all 0 without counts (no bonus)."""
    if not train_counts:
        return np.zeros(classes)
    counts = np.array([train_counts.get(k, 0) for k in range(classes)], dtype=np.float64)
    known = [train_counts[k] for k in train_counts if 0 < k < classes]
    fewest = min(known) if known else 0
    return np.asarray(np.sqrt((fewest + 1) / (counts + 1)).clip(0.0, 1.0))


def rarity(scores: np.ndarray, labels: np.ndarray, class_weights: np.ndarray,
           floor: float) -> float:
    """The largest score x class rarity over the boxes scoring at least `floor` (0: none)."""
    kept = np.asarray(scores) >= floor
    labels = np.asarray(labels)[kept]
    inside = (labels >= 0) & (labels < len(class_weights))
    if not inside.any():
        return 0.0
    return float((np.asarray(scores)[kept][inside] * class_weights[labels[inside]]).max())


def class_profile(scores: np.ndarray, labels: np.ndarray, classes: int,
                  floor: float) -> np.ndarray:
    """Box scores summed per class and normalized to sum 1 (all 0 when nothing is found)."""
    kept = np.asarray(scores) >= floor
    labels = np.asarray(labels)[kept]
    inside = (labels >= 0) & (labels < classes)
    profile = np.bincount(labels[inside], weights=np.asarray(scores)[kept][inside],
                          minlength=classes).astype(np.float64)
    total = profile.sum()
    return profile / total if total > 0 else profile


def task_signals(scores: np.ndarray, labels: np.ndarray, class_weights: np.ndarray,
                 floor: float, flip: float = 0.0) -> TaskSignals:
    """A task's signals from its raw detections (`flip` from `flip_instability`, if run)."""
    return TaskSignals(uncertainty(scores, floor), flip,
                       rarity(scores, labels, class_weights, floor),
                       class_profile(scores, labels, len(class_weights), floor))


def _distance(profile: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Total-variation distance (half the L1), in [0, 1], of a profile to each row."""
    return np.asarray(0.5 * np.abs(others - profile[None, :]).sum(axis=1))


def priorities(signals: Sequence[TaskSignals], weights: OrderWeights,
               centers: Sequence[np.ndarray] = ()) -> list[float]:
    """Each task's priority in [0, 1] (higher = label sooner), in the order given.

    Greedy: the task with the highest weighted sum goes first, and each later task's diversity
    is its distance to the nearest task ranked before it (or to `centers`, e.g. the profiles of
    labeled tasks); the first task with no centers gets diversity 1.
    """
    if not signals:
        return []
    total = weights.total() or 1.0
    base = np.array([weights.uncertainty * s.uncertainty + weights.flip * s.flip
                     + weights.rare * s.rarity for s in signals])
    profiles = np.stack([s.profile for s in signals])
    nearest = np.ones(len(signals))
    if len(centers):
        nearest = np.min([_distance(center, profiles) for center in centers], axis=0)
    result = np.zeros(len(signals))
    left = np.ones(len(signals), dtype=bool)
    for _ in range(len(signals)):
        value = np.where(left, base + weights.diversity * nearest, -np.inf)
        pick = int(np.argmax(value))
        result[pick], left[pick] = value[pick] / total, False
        if weights.diversity:
            nearest = np.minimum(nearest, _distance(profiles[pick], profiles))
    return [round(float(v), 6) for v in result]


def apply_priorities(items: list[dict], weights: OrderWeights) -> None:
    """Replace the `signals` of prediction items by `priority` and `score` = 1 - priority,
    so Label Studio's ascending prediction-score sort serves the most useful task first."""
    ranked = [item for item in items if "signals" in item]
    for item, value in zip(ranked, priorities([item.pop("signals") for item in ranked],
                                              weights), strict=True):
        item["priority"], item["score"] = value, round(1.0 - value, 6)


def options_for(settings: Settings, champion: Mapping[str, Any]) -> OrderOptions | None:
    """The detection order of a champion under TASK_ORDER (None: the mean-score order)."""
    if settings.task_order != "detection":
        return None
    weights = OrderWeights(settings.order_weight_uncertainty, settings.order_weight_flip,
                           settings.order_weight_diversity, settings.order_weight_rare)
    return OrderOptions(weights, dict(champion.get("train_class_counts") or {}))
