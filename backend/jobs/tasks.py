"""RQ job functions: importable top-level functions with primitive arguments.

Each builds what it needs from the worker's environment (Settings.from_env), so any worker on
any machine sharing the Redis and the registry can run it. Training, the workload top-up and
reconciliation live here; pre-labeling (push-back, new tasks) in pushback.py, the review in
review.py.
"""

from __future__ import annotations

import logging
from typing import Any

from backend.core.errors import HandedBack, NotEnoughLabels
from backend.core.settings import Settings
from backend.jobs import handback
from backend.jobs.context import Context, acquire, progress
from backend.jobs.policy import training_due
from backend.jobs.pushback import predict_new_tasks, push_back
from backend.jobs.queues import (
    HOUSEKEEPING_QUEUE,
    RECONCILE_TIMEOUT_S,
    TRAIN_TIMEOUT_S,
    TRAINING_QUEUE,
)
from backend.labelstudio.client import labeled_task_count

logger = logging.getLogger(__name__)

# Jobs queued before push-back moved to pushback.py name it here; they still resolve.
__all__ = ["Context", "predict_new_tasks", "push_back", "reconcile", "top_up_assignments",
           "train_project"]


def _training_progress(step: int, total: int, loss: float) -> None:
    handback.raise_if_asked(f"training at step {step}/{total}")
    if step % 25 == 0 or step == total:
        progress(stage="training", step=step, steps=total, loss=round(loss, 4))


def train_project(project: int, context: Context | None = None) -> dict[str, Any]:
    """Train the project if the policy says so (or it was asked to); then queue what follows."""
    ctx = context or Context(Settings.from_env())
    s = ctx.settings
    lock = acquire(ctx, "train", project, f"train:{project}",
                    "backend.jobs.tasks.train_project", TRAINING_QUEUE, TRAIN_TIMEOUT_S)
    if lock is None:
        return {"status": "deferred", "reason": "another training of this project is running"}
    try:
        forced = ctx.queue.is_forced(project)
        labeled = labeled_task_count(ctx.api.project(project))
        last = ctx.queue.last_trained(project)
        if last is None:  # Redis lost its state: the registry remembers the last round
            versions = ctx.registry.versions(project)
            if versions:
                last = int(versions[-1].get("labeled_tasks") or 0) or None
        decision = training_due(labeled, last, forced=forced, min_labeled=s.train_min_labeled,
                                every=s.train_every, growth=s.train_growth)
        if not decision.due:
            return {"status": "not due", "reason": decision.reason}
        logger.info("project %s: training: %s", project, decision.reason)
        progress(stage="training", reason=decision.reason)
        from backend.model.detector import resolve_device
        from backend.model.training import train_round

        try:
            handback.raise_if_asked("training about to start")
            result = train_round(project, s, ctx.api, ctx.fetcher, ctx.registry,
                                 device=resolve_device(s.device), progress=_training_progress,
                                 before_commit=lock.ensure, labeled_tasks=labeled)
        except NotEnoughLabels as exc:
            return {"status": "not enough labels", "reason": str(exc)}
        except HandedBack as exc:
            lock.release()  # first, so the next worker finds the project free
            requeued = ctx.queue.request_training(project)
            ctx.queue.record_training(project, "handed_back")
            logger.warning("project %s: %s; queued again as %s", project, exc,
                           requeued or "the pending training")
            return {"status": "handed back", "reason": str(exc), "requeued_as": requeued}
        lock.ensure()
        ctx.queue.set_last_trained(project, labeled)  # Label Studio's count, as compared
        ctx.queue.record_training(
            project, "promoted" if result.promoted else "rejected", seconds=result.seconds,
            labeled=labeled, has_champion=result.promoted or result.champion_metrics is not None)
        if forced:
            ctx.queue.clear_forced(project)
        if result.promoted:
            ctx.queue.request_pushback(project)
            ctx.queue.request_review(project)
    finally:
        lock.__exit__()
    # A training that finds new labels due runs once more.
    now = labeled_task_count(ctx.api.project(project))
    if training_due(now, labeled, forced=False, min_labeled=s.train_min_labeled,
                    every=s.train_every, growth=s.train_growth).due:
        ctx.queue.request_training(project)
    return {"status": "trained", **result.to_dict()}


def top_up_assignments(project: int, context: Context | None = None) -> dict[str, Any]:
    """Refill each labeler's batch (`mlassist assign`) after labels or new tasks."""
    from backend.tools.assign import top_up

    ctx = context or Context(Settings.from_env())
    lock = acquire(ctx, "assign", project, f"assign:{project}",
                    "backend.jobs.tasks.top_up_assignments", HOUSEKEEPING_QUEUE,
                    RECONCILE_TIMEOUT_S)
    if lock is None:
        return {"status": "deferred: another top-up is running"}
    try:  # acquire entered the lock; the split is read under it (`assign` writes it so)
        config = ctx.queue.assignment(project)
        if config is None:
            return {"status": "no workload split for this project"}
        return top_up(ctx.api, project, config["labelers"], int(config["batch"]),
                      int(config.get("overlap", 1)))
    finally:
        lock.__exit__()


def reconcile(context: Context | None = None) -> dict[str, Any]:
    """Queue what is due for every known project: a lost webhook delays, never loses, work."""
    ctx = context or Context(Settings.from_env())
    queued: dict[str, list[int]] = {"training": [], "pushback": [], "assign": []}
    for project in ctx.queue.projects():
        if ctx.queue.request_training(project):
            queued["training"].append(project)
        if ctx.queue.request_assign(project):
            queued["assign"].append(project)
        champion = ctx.registry.champion(project)
        if champion is None:
            continue
        if (ctx.registry.review(project) or {}).get("champion") != champion["version"]:
            ctx.queue.request_review(project)  # the promotion's request was lost
        done = ctx.queue.pushback_done(project) or {}
        # A new champion, failed tasks, or tasks whose TASKS_CREATED was lost.
        tasks = int(ctx.api.project(project).get("task_number") or 0)
        if (done.get("version") != champion["version"] or done.get("tasks") != tasks) \
                and ctx.queue.request_pushback(project):
            queued["pushback"].append(project)
    return queued
