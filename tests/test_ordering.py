from __future__ import annotations

import numpy as np
import pytest

from backend.serving import ordering
from backend.serving.ordering import OrderWeights, TaskSignals


def test_entropy_peaks_at_one_half() -> None:
    # H(0.5) = 1 bit; H(0.9) = -(0.9 log2 0.9 + 0.1 log2 0.1) = 0.469.
    assert ordering.binary_entropy(np.array([0.5, 0.9])) == pytest.approx([1.0, 0.469], abs=1e-3)


def test_uncertainty_is_the_mean_entropy_over_the_floor() -> None:
    # 0.01 is under the floor; the mean of H(0.5)=1 and H(0.9)=0.469 is 0.7345.
    assert ordering.uncertainty(np.array([0.5, 0.9, 0.01]), 0.05) == pytest.approx(0.7345, abs=1e-3)
    assert ordering.uncertainty(np.array([0.01]), 0.05) == 1.0  # nothing found: serve it early


def test_unflip_maps_boxes_back() -> None:
    # On a 100 px wide image, x 10..30 appears at 70..90 on the mirror.
    assert ordering.unflip(np.array([[70, 5, 90, 25]]), 100).tolist() == [[10, 5, 30, 25]]


def test_a_box_that_moves_on_the_flip_scores_higher_instability() -> None:
    boxes = np.array([[10.0, 10, 30, 30]])
    scores, labels = np.array([0.9]), np.array([3])
    stable = ordering.flip_instability(boxes, scores, labels, boxes, scores, labels)
    # Shifted by 10 px: IoU = 10x20 / (400 + 400 - 200) = 1/3, so instability 2/3.
    moved = ordering.flip_instability(boxes, scores, labels, boxes + [10, 0, 10, 0], scores,
                                      labels)
    other_class = ordering.flip_instability(boxes, scores, labels, boxes, scores,
                                            np.array([4]))
    assert stable == 0.0
    assert moved == pytest.approx(2 / 3)
    assert other_class == 1.0
    # A second box found only on the flip: of the three boxes compared (1 here, 2 there) one
    # matches nothing, so the mean IoU is 2/3 and the instability 1/3.
    extra = np.array([[10.0, 10, 30, 30], [60, 60, 80, 80]])
    assert ordering.flip_instability(boxes, scores, labels, extra, np.array([0.9, 0.8]),
                                     np.array([3, 3])) == pytest.approx(1 / 3)


def test_rare_classes_get_the_bonus() -> None:
    # Class 1 has 99 training boxes, class 2 has 0: rarity sqrt(1/100) = 0.1 and 1.
    weights = ordering.class_rarity({1: 99, 2: 0}, 3)
    assert weights.tolist() == pytest.approx([1.0, 0.1, 1.0])
    assert ordering.rarity(np.array([0.8]), np.array([1]), weights, 0.05) == pytest.approx(0.08)
    assert ordering.rarity(np.array([0.8, 0.6]), np.array([1, 2]), weights,
                           0.05) == pytest.approx(0.6)
    assert ordering.class_rarity({}, 3).tolist() == [0.0, 0.0, 0.0]


def test_class_profile_is_a_distribution() -> None:
    profile = ordering.class_profile(np.array([0.6, 0.2, 0.01]), np.array([1, 2, 1]), 3, 0.05)
    assert profile.tolist() == pytest.approx([0.0, 0.75, 0.25])
    assert ordering.class_profile(np.array([]), np.array([], int), 3, 0.05).tolist() == [0, 0, 0]


def _signals(u: float, profile: list[float], rarity: float = 0.0) -> TaskSignals:
    return TaskSignals(u, 0.0, rarity, np.array(profile))


def test_diversity_puts_a_different_task_before_a_duplicate() -> None:
    # Tasks 0 and 1 look alike and are the most uncertain; task 2 is less uncertain but new.
    tasks = [_signals(0.9, [1, 0]), _signals(0.85, [1, 0]), _signals(0.6, [0, 1])]
    only_uncertainty = ordering.priorities(tasks, OrderWeights(diversity=0.0, rare=0.0))
    assert only_uncertainty == pytest.approx([0.9, 0.85, 0.6])
    mixed = ordering.priorities(tasks, OrderWeights(diversity=1.0, rare=0.0))
    # First pick: task 0 (0.9 + 1) / 2; then task 2 (0.6 + 1) / 2 beats task 1 (0.85 + 0) / 2.
    assert mixed == pytest.approx([0.95, 0.425, 0.8])
    assert sorted(range(3), key=lambda k: -mixed[k]) == [0, 2, 1]


def test_labeled_centers_lower_the_diversity_of_what_was_seen() -> None:
    tasks = [_signals(0.5, [1, 0]), _signals(0.5, [0, 1])]
    result = ordering.priorities(tasks, OrderWeights(uncertainty=1, diversity=1, rare=0),
                                 centers=[np.array([1.0, 0])])
    assert result[1] > result[0]


def test_rarity_weight_moves_a_rare_task_first() -> None:
    tasks = [_signals(0.6, [1, 0], rarity=0.0), _signals(0.5, [1, 0], rarity=1.0)]
    assert ordering.priorities(tasks, OrderWeights(diversity=0, rare=0))[0] > 0.5
    ranked = ordering.priorities(tasks, OrderWeights(diversity=0, rare=0.5))
    assert ranked[1] > ranked[0]
    assert ordering.priorities([], OrderWeights()) == []
