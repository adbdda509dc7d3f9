from __future__ import annotations

import numpy as np
import pytest

from backend.model.evaluation import (
    ImagePrediction,
    ImageTruth,
    calibrate_threshold,
    calibrate_thresholds,
    coco_metrics,
    labels_needed,
    precision_recall_at,
)

NAMES = ["__background__", "circle", "square"]
POOLED_NAMES = [*NAMES, "star"]


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


def images_with(hit_score: float, miss_score: float, count: int, label: int = 1
                ) -> tuple[list[ImageTruth], list[ImagePrediction]]:
    """`count` images with one box of `label`: found at `hit_score`, plus a false box at
    `miss_score` (of the same class)."""
    truths = [truth((10, 10, 50, 50, label)) for _ in range(count)]
    predictions = [found((10, 10, 50, 50, hit_score, label), (120, 120, 160, 160, miss_score,
                                                                label)) for _ in range(count)]
    return truths, predictions


def test_pooled_calibration_gives_classes_absent_from_validation_the_pooled_threshold() -> None:
    truths, predictions = images_with(0.9, 0.4, 20)  # circles: right at 0.9, wrong at 0.4
    chosen = calibrate_thresholds(truths, predictions, POOLED_NAMES, 0.9)
    assert chosen["circle"]["threshold"] == pytest.approx(0.9)
    assert chosen["circle"]["recall"] == 1.0 and chosen["circle"]["source"] == "class"
    for absent in ("square", "star"):  # no validation box or detection: the pooled curve
        assert chosen[absent]["threshold"] == pytest.approx(0.9)
        assert chosen[absent]["recall"] is None and chosen[absent]["source"] == "pooled"
        assert chosen[absent]["support"] == {"boxes": 0, "detections": 0}
    # each class alone: a class nobody saw gets no threshold (and is hidden)
    assert calibrate_threshold(truths, predictions, 2, 0.9)["threshold"] is None


def test_pooled_calibration_keeps_a_well_supported_bad_class_hidden() -> None:
    good_truths, good_predictions = images_with(0.9, 0.4, 20)
    # 20 squares, every detection of them wrong and confident
    bad_truths = [truth((10, 10, 50, 50, 2)) for _ in range(20)]
    bad_predictions = [found((120, 120, 160, 160, 0.95, 2)) for _ in range(20)]
    chosen = calibrate_thresholds(good_truths + bad_truths, good_predictions + bad_predictions,
                                 POOLED_NAMES, 0.9)
    square = chosen["square"]
    # at any cut that keeps its boxes its estimate is (0 + 10 p) / (20 + 10) < 0.9
    assert square["threshold"] is None or square["threshold"] > 0.95
    assert square["support"] == {"boxes": 20, "detections": 20}


def test_pooled_calibration_shrinks_a_rare_class_toward_the_pool() -> None:
    truths, predictions = images_with(0.9, 0.4, 20)
    # one star: found at 0.6, and a false star at 0.8; alone it reaches 0.9 nowhere
    truths.append(truth((10, 10, 50, 50, 3)))
    predictions.append(found((10, 10, 50, 50, 0.6, 3), (120, 120, 160, 160, 0.8, 3)))
    chosen = calibrate_thresholds(truths, predictions, POOLED_NAMES, 0.9)
    star = chosen["star"]
    # at 0.9 (nothing of its own kept) the estimate is the pool's precision, 1.0
    assert star["threshold"] == pytest.approx(0.9) and star["source"] == "pooled"
    assert star["precision"] == pytest.approx(1.0) and star["recall"] == 0.0
    # its false 0.8 box keeps it from going lower: (0 + 10 * 20/21) / (1 + 10) < 0.9
    assert calibrate_threshold(truths, predictions, 3, 0.9, min_detections=1)["threshold"] is None


def test_pooled_calibration_needs_enough_detections_in_all() -> None:
    truths, predictions = images_with(0.9, 0.4, 2)  # 4 detections in all, under 5
    chosen = calibrate_thresholds(truths, predictions, POOLED_NAMES, 0.9)
    assert all(entry["threshold"] is None for entry in chosen.values())
    # its own best cut with at least 3 boxes kept is the lowest: 2 right of 4
    assert chosen["circle"]["best_precision"] == pytest.approx(0.5)
