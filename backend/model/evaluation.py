"""Detection metrics (pycocotools), calibrated per-class thresholds, and labels-needed estimates.

Everything here works on plain arrays: ground truth and detections per image, class indices
from 1 (0 is the background, as in torchvision). No torch, no I/O.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MATCH_IOU = 0.5
MAX_LABELS_ESTIMATE = 1e7


@dataclass(frozen=True)
class ImageTruth:
    """Ground truth of one image: xyxy pixel boxes and class indices."""

    boxes: np.ndarray  # float [N, 4]
    labels: np.ndarray  # int [N]
    width: int
    height: int


@dataclass(frozen=True)
class ImagePrediction:
    """Detections of one image: xyxy pixel boxes, scores, class indices."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass
class Metrics:
    """What one evaluation measured; `per_class` is keyed by class name."""

    ap: float
    ap50: float
    per_class: dict[str, dict[str, float | None]] = field(default_factory=dict)
    images: int = 0
    boxes: int = 0

    def to_dict(self) -> dict:
        return {"ap": self.ap, "ap50": self.ap50, "per_class": self.per_class,
                "images": self.images, "boxes": self.boxes}


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    if len(others) == 0:
        return np.zeros(0)
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return np.asarray(inter / np.maximum(area + areas - inter, 1e-12))


def iou_matrix(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of every box (rows) with every other box (columns), xyxy; shape [N, M]."""
    matrix = np.zeros((len(boxes), len(others)))
    for row, box in enumerate(boxes):
        matrix[row] = _iou(box, others)
    return matrix


def match_detections(truths: Sequence[ImageTruth], predictions: Sequence[ImagePrediction],
                     class_index: int, iou: float = MATCH_IOU) -> tuple[np.ndarray, np.ndarray,
                                                                          int]:
    """Greedy matching (best score first) of one class: (scores, is_true_positive, n_truth)."""
    scores: list[float] = []
    hits: list[bool] = []
    n_truth = 0
    for truth, prediction in zip(truths, predictions, strict=True):
        gt = truth.boxes[truth.labels == class_index]
        n_truth += len(gt)
        mine = prediction.labels == class_index
        order = np.argsort(-prediction.scores[mine], kind="stable")
        boxes, confidences = prediction.boxes[mine][order], prediction.scores[mine][order]
        used = np.zeros(len(gt), dtype=bool)
        for box, confidence in zip(boxes, confidences, strict=True):
            overlaps = _iou(box, gt)
            overlaps[used] = -1.0
            best = int(np.argmax(overlaps)) if len(overlaps) else -1
            hit = best >= 0 and overlaps[best] >= iou
            if hit:
                used[best] = True
            scores.append(float(confidence))
            hits.append(bool(hit))
    order = np.argsort(-np.asarray(scores), kind="stable")
    return np.asarray(scores)[order], np.asarray(hits, dtype=bool)[order], n_truth


def precision_recall_at(truths: Sequence[ImageTruth], predictions: Sequence[ImagePrediction],
                        class_index: int, threshold: float) -> tuple[float | None, float | None]:
    """Precision and recall of one class when boxes under `threshold` are dropped."""
    scores, hits, n_truth = match_detections(truths, predictions, class_index)
    kept = scores >= threshold
    precision = float(hits[kept].mean()) if kept.any() else None
    recall = float(hits[kept].sum() / n_truth) if n_truth else None
    return precision, recall


def calibrate_threshold(truths: Sequence[ImageTruth], predictions: Sequence[ImagePrediction],
                        class_index: int, target_precision: float,
                        min_detections: int = 3) -> dict[str, float | None]:
    """The lowest score threshold whose kept boxes reach `target_precision` (max recall).

    Returns {"threshold", "precision", "recall", "best_precision"}; threshold is None when no
    threshold with at least `min_detections` kept boxes reaches the target.
    """
    scores, hits, n_truth = match_detections(truths, predictions, class_index)
    answer: dict[str, float | None] = {"threshold": None, "precision": None, "recall": None,
                                       "best_precision": None}
    if len(scores) == 0 or n_truth == 0:
        return answer
    true_positives = np.cumsum(hits)
    precision = true_positives / np.arange(1, len(hits) + 1)
    # A cut is only valid between distinct scores: take the last index of each score run.
    last_of_run = np.append(scores[1:] != scores[:-1], True)
    candidates = np.where(last_of_run & (np.arange(1, len(hits) + 1) >= min_detections))[0]
    if len(candidates) == 0:
        return answer
    answer["best_precision"] = float(precision[candidates].max())
    reaching = candidates[precision[candidates] >= target_precision]
    if len(reaching) == 0:
        return answer
    cut = int(reaching.max())
    answer.update(threshold=float(scores[cut]), precision=float(precision[cut]),
                  recall=float(true_positives[cut] / n_truth))
    return answer


PRIOR_DETECTIONS = 10  # how many detections' worth of weight the pooled curve gets
MIN_POOLED_DETECTIONS = 5  # benchmarks/calibration.py: 10 showed less at the same precision


def calibrate_thresholds(truths: Sequence[ImageTruth], predictions: Sequence[ImagePrediction],
                         class_names: Sequence[str], target_precision: float,
                         prior: float = PRIOR_DETECTIONS,
                         min_pooled: int = MIN_POOLED_DETECTIONS) -> dict[str, dict]:
    """Per-class thresholds that lean on all classes together where a class has few boxes.

    A class's precision at a threshold is estimated as (its true positives + `prior` x the
    pooled precision of every class at that threshold) / (its kept detections + `prior`): a
    class with many validation detections follows its own curve, a class with none (a rare
    class absent from a small validation set) follows the pooled one. Its threshold is the
    lowest score whose estimate reaches `target_precision` with at least `min_pooled`
    detections of all classes kept, or None when none does.
    (benchmarks/calibration.py measured this against each class alone on held-out images.)

    Returns, per class name (index 0, the background, skipped): {"threshold", "precision" (the
    estimate there), "recall" (its own, None without validation boxes), "best_precision"
    (calibrate_threshold's, on its own boxes), "support": {"boxes", "detections"},
    "source": "class" | "pooled" | None (whose curve decided)}.
    """
    matched = [match_detections(truths, predictions, k) for k in range(len(class_names))]
    scores = np.concatenate([m[0] for m in matched[1:]] or [np.zeros(0)])
    hits = np.concatenate([m[1] for m in matched[1:]] or [np.zeros(0, bool)])
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    kept = np.arange(1, len(scores) + 1)
    pooled_precision = np.cumsum(hits) / np.maximum(kept, 1)
    last_of_run = np.append(scores[1:] != scores[:-1], True) if len(scores) else scores > 0
    cuts = np.where(last_of_run & (kept >= min_pooled))[0]
    found: dict[str, dict] = {}
    for k, name in enumerate(class_names):
        if k == 0:
            continue
        own_scores, own_hits, n_truth = matched[k]
        # per candidate cut (a pooled score): this class's kept detections and true positives
        own_kept = np.searchsorted(-own_scores, -scores[cuts], side="right")
        own_tp = np.concatenate([[0], np.cumsum(own_hits)])[own_kept]
        estimate = (own_tp + prior * pooled_precision[cuts]) / (own_kept + prior)
        entry: dict[str, Any] = {
            "threshold": None, "precision": None, "recall": None,
            "best_precision": calibrate_threshold(truths, predictions, k,
                                                  target_precision)["best_precision"],
            "support": {"boxes": int(n_truth), "detections": int(len(own_scores))},
            "source": None}
        reaching = np.where(estimate >= target_precision)[0]
        if len(reaching):
            at = int(reaching.max())
            entry.update(threshold=float(scores[cuts[at]]), precision=float(estimate[at]),
                         recall=float(own_tp[at] / n_truth) if n_truth else None,
                         source="class" if own_kept[at] >= prior else "pooled")
        found[name] = entry
    return found


Matched = tuple[np.ndarray, np.ndarray, int]  # match_detections of one class


def shown_quality(truths: Sequence[ImageTruth], predictions: Sequence[ImagePrediction],
                  class_names: Sequence[str], thresholds: dict[str, float | None]
                  ) -> dict[str, float | int | None]:
    """What pre-labels at `thresholds` would give on these images: the boxes shown, their
    precision, and the share of ground-truth boxes they get right (same class, IoU >= 0.5).
    A class without a threshold shows nothing."""
    matched = [match_detections(truths, predictions, k) for k in range(len(class_names))]
    return shown_quality_of(matched, class_names, thresholds)


def shown_quality_of(matched: Sequence[Matched], class_names: Sequence[str],
                     thresholds: dict[str, float | None]) -> dict[str, float | int | None]:
    """shown_quality from each class's matches (index 0 ignored), for many thresholds."""
    shown = hits = total = 0
    for k, name in enumerate(class_names):
        if k == 0:
            continue
        scores, hit, n_truth = matched[k]  # scores sorted high to low
        total += n_truth
        cut = thresholds.get(name)
        if cut is None:
            continue
        kept = int(np.searchsorted(-scores, -cut, side="right"))
        shown += kept
        hits += int(hit[:kept].sum())
    return {"shown": shown, "precision": hits / shown if shown else None,
            "share_correct": hits / total if total else None}


def coco_metrics(truths: Sequence[ImageTruth], predictions: Sequence[ImagePrediction],
                 class_names: Sequence[str]) -> Metrics:
    """AP (IoU .50:.95), AP50 and per-class AP with pycocotools; class_names[0] is background."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images: list[dict] = []
    annotations: list[dict] = []
    detections: list[dict] = []
    for image_id, (truth, prediction) in enumerate(zip(truths, predictions, strict=True), 1):
        images.append({"id": image_id, "width": truth.width, "height": truth.height})
        for box, label in zip(truth.boxes, truth.labels, strict=True):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(label), "bbox": [float(box[0]),
                                                                    float(box[1]), w, h],
                                "area": w * h, "iscrowd": 0})
        for box, score, label in zip(prediction.boxes, prediction.scores, prediction.labels,
                                     strict=True):
            detections.append({"image_id": image_id, "category_id": int(label),
                               "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]),
                                        float(box[3] - box[1])], "score": float(score)})
    categories = [{"id": index, "name": name} for index, name in enumerate(class_names)
                  if index > 0]
    metrics = Metrics(ap=0.0, ap50=0.0, images=len(images), boxes=len(annotations))
    if not annotations:
        return metrics
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ground = COCO()
        ground.dataset = {"images": images, "annotations": annotations,
                          "categories": categories}
        ground.createIndex()
        found = ground.loadRes(detections) if detections else COCO()
        if not detections:
            found.dataset = {"images": images, "annotations": [], "categories": categories}
            found.createIndex()
        evaluation = COCOeval(ground, found, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    metrics.ap = max(0.0, float(evaluation.stats[0]))
    metrics.ap50 = max(0.0, float(evaluation.stats[1]))
    precision = evaluation.eval["precision"]  # [iou, recall, class, area, max_dets]
    for k, category in enumerate(evaluation.params.catIds):
        name = class_names[category]
        per_iou = precision[:, :, k, 0, -1]
        valid = per_iou[per_iou > -1]
        at50 = precision[0, :, k, 0, -1]
        at50 = at50[at50 > -1]
        has_truth = any(a["category_id"] == category for a in annotations)
        metrics.per_class[name] = {
            "ap": float(valid.mean()) if has_truth and valid.size else None,
            "ap50": float(at50.mean()) if has_truth and at50.size else None,
        }
    return metrics


def labels_needed(history: Sequence[tuple[int, float | None]], target: float) -> int | None:
    """Training labels needed for a quality score to reach `target`, from earlier versions.

    `history` holds (training labels, score) of earlier versions. Fits score = a + b * ln(n)
    (learning curves are roughly log-linear early on) and solves for the target; None when the
    curve does not rise or there are fewer than two distinct label counts.
    """
    points = [(n, s) for n, s in history if n > 0 and s is not None and math.isfinite(s)]
    if len({n for n, _ in points}) < 2:
        return None
    x = np.log([n for n, _ in points])
    y = np.array([s for _, s in points])
    slope, intercept = np.polyfit(x, y, 1)
    if slope <= 1e-6:
        return None
    exponent = (target - intercept) / slope
    if exponent > math.log(MAX_LABELS_ESTIMATE):
        return None  # the curve is too flat to say
    return int(math.ceil(math.exp(exponent)))
