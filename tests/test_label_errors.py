"""Suspected label errors from out-of-sample predictions: each kind found, clean labels not."""

from __future__ import annotations

import numpy as np

from backend.model.evaluation import ImagePrediction, ImageTruth
from backend.model.label_errors import issue_score, task_issues

NAMES = ["__background__", "cat", "dog"]


def truth(*boxes: tuple[float, float, float, float, int]) -> ImageTruth:
    return ImageTruth(np.array([b[:4] for b in boxes], np.float32).reshape(-1, 4),
                      np.array([b[4] for b in boxes], np.int64), 200, 200)


def seen(*boxes: tuple[float, float, float, float, int, float]) -> ImagePrediction:
    return ImagePrediction(np.array([b[:4] for b in boxes], np.float32).reshape(-1, 4),
                           np.array([b[5] for b in boxes], np.float32),
                           np.array([b[4] for b in boxes], np.int64))


def kinds(found: list) -> list[str]:
    return [issue.kind for issue in found]


def test_labels_the_model_agrees_with_raise_nothing() -> None:
    found = task_issues(truth((10, 10, 60, 60, 1), (100, 100, 180, 190, 2)),
                        seen((12, 11, 61, 58, 1, 0.95), (101, 98, 178, 190, 2, 0.9),
                             (150, 10, 190, 40, 1, 0.2)),  # unsure: below the threshold
                        NAMES)
    assert found == [] and issue_score(found) == 0.0


def test_an_unlabeled_object_the_model_is_sure_of_is_missing() -> None:
    found = task_issues(truth((10, 10, 60, 60, 1)),
                        seen((12, 11, 61, 58, 1, 0.95), (100, 100, 180, 190, 2, 0.8)), NAMES)
    assert kinds(found) == ["missing"]
    assert found[0].label == "dog" and found[0].score == np.float32(0.8)
    assert "no labeled box" in found[0].detail


def test_a_swapped_class_is_wrong_class_scored_by_the_gap() -> None:
    found = task_issues(truth((10, 10, 60, 60, 1)),
                        seen((11, 10, 60, 61, 2, 0.9), (10, 10, 60, 60, 1, 0.3)), NAMES)
    assert kinds(found) == ["wrong_class"]
    assert found[0].label == "cat" and abs(found[0].score - 0.6) < 1e-6
    assert "the model sees dog" in found[0].detail


def test_a_shifted_box_is_loose_and_a_far_shifted_one_also_leaves_the_object_missing() -> None:
    near = task_issues(truth((30, 10, 80, 60, 1)), seen((10, 10, 60, 60, 1, 0.9)), NAMES)
    assert kinds(near) == ["loose"]  # IoU 30/70 = 0.43
    assert abs(near[0].score - 0.9 * (1 - 30 * 50 / (70 * 50 + 0.0))) < 1e-3
    far = task_issues(truth((45, 10, 95, 60, 1)), seen((10, 10, 60, 60, 1, 0.9)), NAMES)
    assert sorted(kinds(far)) == ["loose", "missing"]  # IoU 15/85 = 0.18


def test_calibrated_thresholds_decide_what_is_confident() -> None:
    labels = truth((10, 10, 60, 60, 1))
    extra = seen((10, 10, 60, 60, 1, 0.95), (100, 100, 180, 190, 2, 0.7))
    assert kinds(task_issues(labels, extra, NAMES, {"dog": 0.8})) == []
    assert kinds(task_issues(labels, extra, NAMES, {"dog": 0.6})) == ["missing"]
    assert kinds(task_issues(labels, extra, NAMES, {"dog": None}, min_score=0.75)) == []


def test_issues_come_worst_first_and_the_task_scores_its_worst() -> None:
    found = task_issues(truth((10, 10, 60, 60, 1), (100, 100, 150, 150, 1)),
                        seen((10, 10, 60, 60, 2, 0.7), (120, 100, 170, 150, 1, 0.99),
                             (10, 150, 40, 190, 2, 0.55)), NAMES)
    assert [i.score for i in found] == sorted((i.score for i in found), reverse=True)
    assert set(kinds(found)) == {"wrong_class", "loose", "missing"}
    assert issue_score(found) == found[0].score


def test_an_image_labeled_empty_gets_every_confident_object_missing() -> None:
    found = task_issues(truth(), seen((10, 10, 60, 60, 1, 0.9), (80, 80, 120, 120, 2, 0.85)),
                        NAMES)
    assert kinds(found) == ["missing", "missing"]
    assert task_issues(truth(), seen(), NAMES) == []
