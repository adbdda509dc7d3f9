"""Suspected label errors: where a model that never trained on an image disagrees with its label.

The logic follows cleanlab's object-detection scores (overlooked, swapped and badly located
boxes) in a few lines of numpy instead of the dependency (cleanlab pulls scikit-learn and
pandas, and wants predictions reshaped per class); what it gives up is cleanlab's soft
similarity weighting, which its authors tune on COCO-size sets we do not have at small counts.

Three kinds of issue, each scored in [0, 1] (higher = more likely wrong):

- `missing`: a confident detection (at or above its class's calibrated threshold, else
  `min_score`) that overlaps no labeled box of any class (IoU < MISSING_IOU). Score: its
  confidence.
- `wrong_class`: a labeled box that a confident detection of another class covers
  (IoU >= MATCH_IOU) more confidently than any detection of the labeled class does. Score: the
  other class's score minus the labeled class's best score there.
- `loose`: a labeled box whose best-fitting confident detection of its own class overlaps it,
  but loosely (NEAR_IOU <= IoU < LOOSE_IOU). Score: confidence x (1 - IoU). A box shifted far
  enough (IoU < MISSING_IOU) also leaves the object `missing`.

A task's issue score is its worst issue's. No torch, no I/O: arrays in, issues out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from backend.model.evaluation import MATCH_IOU, ImagePrediction, ImageTruth, iou_matrix

MISSING_IOU = 0.3  # a detection overlapping every labeled box less than this is unlabeled
LOOSE_IOU = 0.65  # a labeled box fitted worse than this by its own class is loose
NEAR_IOU = 0.1  # ... by a detection overlapping it at least this much
KINDS = ("missing", "wrong_class", "loose")


@dataclass(frozen=True)
class Issue:
    """One suspected error: its kind, the label concerned, the box (xyxy pixels), the score."""

    kind: str
    label: str
    box: tuple[float, float, float, float]
    score: float
    detail: str

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "label": self.label, "score": round(self.score, 4),
                "box": [round(v, 1) for v in self.box], "detail": self.detail}


def _confident(prediction: ImagePrediction, class_names: Sequence[str],
               thresholds: Mapping[str, float | None], min_score: float) -> np.ndarray:
    """Which detections clear their class's threshold (calibrated, else `min_score`)."""
    cut = np.array([max(min_score, thresholds.get(class_names[int(label)]) or min_score)
                    for label in prediction.labels], dtype=np.float64)
    return np.asarray(prediction.scores >= cut, dtype=bool)


def _box(values: np.ndarray) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in values)
    return x1, y1, x2, y2


def _missing(truth: ImageTruth, prediction: ImagePrediction, confident: np.ndarray,
             overlaps: np.ndarray, names: Sequence[str]) -> list[Issue]:
    issues = []
    for j in np.flatnonzero(confident):
        if len(truth.boxes) and overlaps[:, j].max() >= MISSING_IOU:
            continue
        name, score = names[int(prediction.labels[j])], float(prediction.scores[j])
        issues.append(Issue("missing", name, _box(prediction.boxes[j]), score,
                            f"no labeled box where the model sees {name} ({score:.2f})"))
    return issues


def _labeled_box_issues(truth: ImageTruth, prediction: ImagePrediction, confident: np.ndarray,
                        overlaps: np.ndarray, names: Sequence[str]) -> list[Issue]:
    issues = []
    for i, (box, label) in enumerate(zip(truth.boxes, truth.labels, strict=True)):
        name = names[int(label)]
        same = prediction.labels == label
        covering = overlaps[i] >= MATCH_IOU
        own = float(prediction.scores[same & covering].max(initial=0.0))
        rivals = np.flatnonzero(~same & covering & confident)
        if len(rivals):
            best = rivals[np.argmax(prediction.scores[rivals])]
            other, score = names[int(prediction.labels[best])], float(prediction.scores[best])
            if score > own:
                issues.append(Issue("wrong_class", name, _box(box), score - own,
                                    f"labeled {name}, the model sees {other} ({score:.2f} "
                                    f"against {own:.2f})"))
                continue
        fitting = np.flatnonzero(same & confident & (overlaps[i] >= NEAR_IOU))
        if len(fitting):
            best = fitting[np.argmax(overlaps[i][fitting])]
            fit, score = float(overlaps[i][best]), float(prediction.scores[best])
            if fit < LOOSE_IOU:
                issues.append(Issue("loose", name, _box(box), score * (1.0 - fit),
                                    f"{name} box fits the model's ({score:.2f}) at IoU "
                                    f"{fit:.2f}"))
    return issues


def task_issues(truth: ImageTruth, prediction: ImagePrediction, class_names: Sequence[str],
                thresholds: Mapping[str, float | None] | None = None,
                min_score: float = 0.5) -> list[Issue]:
    """The suspected errors of one labeled image, worst first.

    `prediction` must come from a model that did not train on this image; `class_names` index
    both (0 is the background); `thresholds` are the model's calibrated ones per class name.
    """
    confident = _confident(prediction, class_names, thresholds or {}, min_score)
    overlaps = iou_matrix(truth.boxes, prediction.boxes)
    issues = (_missing(truth, prediction, confident, overlaps, class_names)
              + _labeled_box_issues(truth, prediction, confident, overlaps, class_names))
    return sorted(issues, key=lambda issue: -issue.score)


def issue_score(issues: Sequence[Issue]) -> float:
    """A task's issue score: its worst issue's, 0 when there is none."""
    return max((issue.score for issue in issues), default=0.0)
