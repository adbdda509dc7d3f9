from __future__ import annotations

import numpy as np
import pytest

from backend.model.evaluation import (
    ImagePrediction,
    ImageTruth,
    calibrate_threshold,
    coco_metrics,
    labels_needed,
    precision_recall_at,
)

NAMES = ["__background__", "circle", "square"]


def truth(*boxes: tuple[float, float, float, float, int]) -> ImageTruth:
    return ImageTruth(np.array([b[:4] for b in boxes], np.float32).reshape(-1, 4),
                      np.array([b[4] for b in boxes], np.int64), 200, 200)


def found(*boxes: tuple[float, float, float, float, float, int]) -> ImagePrediction:
    return ImagePrediction(np.array([b[:4] for b in boxes], np.float32).reshape(-1, 4),
                           np.array([b[4] for b in boxes], np.float32),
                           np.array([b[5] for b in boxes], np.int64))


# Two circles; detections: hit (0.9), miss (0.8), hit (0.7). Precision/recall after each:
# (1, .5), (.5, .5), (2/3, 1). COCO's 101-point interpolated precision is 1 for recall
# <= .5 (51 points) and 2/3 above (50 points): AP50 = (51 + 50 * 2/3) / 101 = 0.834983.
# The hits are exact, so every IoU threshold gives the same: AP = AP50.
TRUTHS = [truth((10, 10, 50, 50, 1), (100, 100, 150, 150, 1))]
PREDICTIONS = [found((10, 10, 50, 50, 0.9, 1), (60, 60, 90, 90, 0.8, 1),
                     (100, 100, 150, 150, 0.7, 1))]
EXPECTED_AP = (51 + 50 * 2 / 3) / 101


def test_coco_ap_matches_hand_computation() -> None:
    metrics = coco_metrics(TRUTHS, PREDICTIONS, NAMES)
    assert metrics.ap50 == pytest.approx(EXPECTED_AP, abs=1e-6)
    assert metrics.ap == pytest.approx(EXPECTED_AP, abs=1e-6)
    assert metrics.per_class["circle"]["ap50"] == pytest.approx(EXPECTED_AP, abs=1e-6)
    assert metrics.per_class["square"]["ap50"] is None  # no square in the ground truth
    assert (metrics.images, metrics.boxes) == (1, 2)


def test_half_overlap_counts_at_50_not_at_75() -> None:
    # gt x 0..100, prediction x 20..120 (same height): IoU = 80 / 120 = 0.667, which
    # passes the IoU thresholds .50, .55, .60 and .65: 4 of 10 -> AP = 0.4.
    truths = [truth((0, 0, 100, 100, 2))]
    predictions = [found((20, 0, 120, 100, 0.9, 2))]
    metrics = coco_metrics(truths, predictions, NAMES)
    assert metrics.ap50 == pytest.approx(1.0)
    assert metrics.ap == pytest.approx(0.4)


def test_wrong_class_is_a_miss() -> None:
    metrics = coco_metrics([truth((0, 0, 50, 50, 1))], [found((0, 0, 50, 50, 0.9, 2))], NAMES)
    assert metrics.ap50 == 0.0


def test_precision_recall_at_thresholds() -> None:
    assert precision_recall_at(TRUTHS, PREDICTIONS, 1, 0.85) == (1.0, 0.5)
    assert precision_recall_at(TRUTHS, PREDICTIONS, 1, 0.75) == (0.5, 0.5)
    assert precision_recall_at(TRUTHS, PREDICTIONS, 1, 0.5) == pytest.approx((2 / 3, 1.0))
    assert precision_recall_at(TRUTHS, PREDICTIONS, 1, 0.95) == (None, 0.0)


def test_calibration_picks_lowest_threshold_reaching_precision() -> None:
    at_one = calibrate_threshold(TRUTHS, PREDICTIONS, 1, 0.9, min_detections=1)
    assert at_one == {"threshold": pytest.approx(0.9), "precision": 1.0, "recall": 0.5,
                      "best_precision": 1.0}
    loose = calibrate_threshold(TRUTHS, PREDICTIONS, 1, 0.6, min_detections=1)
    assert loose["threshold"] == pytest.approx(0.7) and loose["recall"] == 1.0
    strict = calibrate_threshold(TRUTHS, PREDICTIONS, 1, 0.9, min_detections=3)
    assert strict["threshold"] is None
    assert strict["best_precision"] == pytest.approx(2 / 3)


def test_labels_needed_from_a_log_linear_curve() -> None:
    # precision = 0.1 * ln(n): reaching 0.9 needs n = e^9 = 8103.08 -> 8104 labels.
    history = [(20, 0.1 * np.log(20)), (80, 0.1 * np.log(80))]
    assert labels_needed(history, 0.9) == 8104
    assert labels_needed([(20, 0.5)], 0.9) is None  # one point: no curve
    assert labels_needed([(20, 0.6), (80, 0.5)], 0.9) is None  # not improving
    assert labels_needed([(20, 0.0), (21, 0.00001)], 0.9) is None  # too flat to say
