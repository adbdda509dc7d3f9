"""The replay benchmark's effort model and per-third shares, with hand-computed numbers."""

from __future__ import annotations

import argparse

from benchmarks.replay_summary import EFFORT_S, effort, pause_seconds, share_correct, summary

TASKS = [  # 3 tasks: nothing predicted, half right, all right
    {"truth_boxes": 4, "accepted": 0, "edited": 0, "deleted": 0, "drawn": 4},
    {"truth_boxes": 4, "accepted": 2, "edited": 1, "deleted": 3, "drawn": 1},
    {"truth_boxes": 2, "accepted": 2, "edited": 0, "deleted": 0, "drawn": 0},
]


def _args(pace: str = "fixed", **seconds: float) -> argparse.Namespace:
    return argparse.Namespace(pace=pace, seconds_per_task=2.0,
                              **{f"seconds_{a}": seconds.get(a, s) for a, s in EFFORT_S.items()})


def test_effort_counts_each_action_at_its_price() -> None:
    found = effort(_args(draw=10, accept=1, edit=4, delete=2), TASKS)
    # assisted: drawn 5 x 10 + accepted 4 x 1 + edited 1 x 4 + deleted 3 x 2 = 64 s
    # unassisted: 10 boxes x 10 s = 100 s
    assert found["assisted_hours"] == round(64 / 3600, 2)
    assert found["saved_share"] == 0.36


def test_an_assistance_that_only_adds_boxes_costs_time() -> None:
    wrong = [{"truth_boxes": 2, "accepted": 0, "edited": 0, "deleted": 5, "drawn": 2}]
    assert effort(_args(), wrong)["saved_share"] < 0


def test_shares_by_third() -> None:
    assert share_correct(TASKS) == 0.4
    thirds = summary(_args(), TASKS, [], 0.0)["share_correct_prelabels_by_third"]
    assert thirds == [0.0, 0.5, 1.0]


def test_the_human_pace_takes_the_effort_models_time_only_while_the_loop_works() -> None:
    args = _args("human", draw=10, accept=1, edit=4, delete=2)
    assert pause_seconds(args, TASKS[1], busy=lambda: True) == 2 * 1 + 4 + 3 * 2 + 10
    assert pause_seconds(args, TASKS[1], busy=lambda: False) == 2.0
    assert pause_seconds(_args(draw=10), TASKS[0], busy=lambda: True) == 2.0


def test_the_first_promotion_is_timed_on_the_labelers_clock() -> None:
    tasks = [{**task, "labeler_s": 3600.0 * i} for i, task in enumerate(TASKS)]
    models = [{"labeled_tasks": 2, "promoted": True, "first_prelabels_at_task": 3}]
    found = summary(_args(), tasks, models, 0.0)
    assert found["first_promoted_model_labeled_tasks"] == 2
    assert found["first_promoted_model_labeler_hours"] == 1.0
