"""The replay's accounting: the effort model (seconds per labeling action, with its sources),
the labeler's pace, and the summary of a run."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

# Seconds per labeling action, for the effort estimate. Drawing a box: 7.0 s with extreme
# clicking, the fastest drawing method measured (Papadopoulos et al., "Extreme clicking for
# efficient object annotation", ICCV 2017; they quote 25.5 s for the classic click-and-drag
# of Su et al., 2012, which Label Studio's rectangle tool is). Verifying a shown box: 1.6 s
# (Papadopoulos et al., "We don't need no bounding-boxes", CVPR 2016). Adjusting a box:
# a verification plus half a drawing, and deleting one: a verification plus a click (ours,
# not measured). The low drawing time makes the saving a conservative one.
EFFORT_S = {"draw": 7.0, "accept": 1.6, "edit": 1.6 + 3.5, "delete": 2.0}


def task_seconds(args: argparse.Namespace, counts: dict[str, int]) -> float:
    """The effort model's time for one task's actions."""
    spent = {"draw": "drawn", "accept": "accepted", "edit": "edited", "delete": "deleted"}
    return sum(getattr(args, f"seconds_{a}") * counts[k] for a, k in spent.items())


def pause_seconds(args: argparse.Namespace, counts: dict[str, int],
                  busy: Callable[[], bool]) -> float:
    """The labeler's time on a task. At the human pace, real time passes only while the loop
    has work in flight: when it is idle nothing can change before the next submission, so
    that wait is skipped (the order of events is a person's at the effort model's speed).
    `busy` is asked a moment after the submission (its webhook's training check has ended
    by then unless a round is due)."""
    human = args.pace == "human" and busy()
    return task_seconds(args, counts) if human else args.seconds_per_task


def share_correct(tasks: list[dict[str, Any]]) -> float:
    """Ground-truth boxes that arrived as correct pre-labels, as a share."""
    return round(sum(t["accepted"] for t in tasks)
                 / max(sum(t["truth_boxes"] for t in tasks), 1), 3)


def effort(args: argparse.Namespace, per_task: list[dict[str, Any]]) -> dict[str, Any]:
    """Estimated labeling time with the assistance and without it (every box drawn)."""
    seconds = {action: getattr(args, f"seconds_{action}") for action in EFFORT_S}
    assisted = sum(task_seconds(args, t) for t in per_task)
    unassisted = seconds["draw"] * sum(t["truth_boxes"] for t in per_task)
    return {"seconds_per_action": seconds, "assisted_hours": round(assisted / 3600, 2),
            "unassisted_hours": round(unassisted / 3600, 2),
            "saved_share": round(1 - assisted / unassisted, 3) if unassisted else None}


def summary(args: argparse.Namespace, per_task: list[dict[str, Any]],
            models: list[dict[str, Any]], started: float) -> dict[str, Any]:
    promoted = [m for m in models if m["promoted"]]
    truth_total = sum(t["truth_boxes"] for t in per_task)
    third = max(len(per_task) // 3, 1)
    return {
        "tasks_labeled": len(per_task),
        "truth_boxes": truth_total,
        **{k: sum(t[k] for t in per_task) for k in ("accepted", "edited", "deleted", "drawn")},
        "share_not_drawn": round(1 - sum(t["drawn"] for t in per_task) / max(truth_total, 1), 3),
        "last_100_share_correct_prelabels": share_correct(per_task[-100:]),
        "share_correct_prelabels_by_third": [share_correct(per_task[a:b]) for a, b in
                                             ((0, third), (third, 2 * third),
                                              (2 * third, len(per_task)))],
        "effort": effort(args, per_task),
        "first_promoted_model_labeled_tasks": promoted[0]["labeled_tasks"] if promoted
        else None,
        # The labeler's own time (effort model) when that model's labels were in.
        "first_promoted_model_labeler_hours": round(
            per_task[promoted[0]["labeled_tasks"] - 1]["labeler_s"] / 3600, 2)
        if promoted and 0 < (promoted[0]["labeled_tasks"] or 0) <= len(per_task) else None,
        "first_trained_prelabels_at_task": min((m["first_prelabels_at_task"] for m in models
                                                if m["first_prelabels_at_task"]), default=None),
        "models_trained": len(models), "models_promoted": len(promoted),
        "wall_seconds": round(time.monotonic() - started, 1),
    }
