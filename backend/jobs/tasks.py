"""RQ job functions: importable top-level functions with primitive arguments.

Each builds what it needs from the worker's environment (Settings.from_env), so any worker on
any machine sharing the Redis and the registry can run it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rq import get_current_job

from backend.errors import NotEnoughLabels
from backend.images import ImageFetcher
from backend.jobs.policy import training_due
from backend.jobs.queues import (
    PREDICT_TIMEOUT_S,
    TRAIN_TIMEOUT_S,
    JobQueue,
    ProjectLock,
    connect,
)
from backend.label_config import parse_label_config
from backend.labelstudio import LabelStudioAPI, LabelStudioAuth
from backend.model.registry import Registry, open_registry
from backend.predictions import PredictOptions, Predictor
from backend.settings import Settings

logger = logging.getLogger(__name__)


class Context:
    """The adapters a job uses, built from settings (tests pass their own)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = connect(settings.redis_url)
        self.queue = JobQueue(self.redis)
        auth = LabelStudioAuth(settings.label_studio_url, settings.label_studio_api_key)
        self.api = LabelStudioAPI(auth)
        self.fetcher = ImageFetcher(auth, settings.allowed_image_hosts,
                                    max_bytes=settings.max_image_bytes,
                                    max_pixels=settings.max_image_pixels,
                                    timeout=settings.image_fetch_timeout)
        self.registry: Registry = open_registry(settings)


def _progress(**meta: Any) -> None:
    job = get_current_job()
    if job is not None:
        job.meta.update(meta)
        job.save_meta()


def _training_progress(step: int, total: int, loss: float) -> None:
    if step % 25 == 0 or step == total:
        _progress(stage="training", step=step, steps=total, loss=round(loss, 4))


def labeled_count(project: dict[str, Any]) -> int:
    return int(project.get("num_tasks_with_annotations") or 0)


def train_project(project: int, context: Context | None = None) -> dict[str, Any]:
    """Train the project if the policy says so (or it was asked to); then queue what follows."""
    ctx = context or Context(Settings.from_env())
    s = ctx.settings
    ctx.queue.clear_pending("train", project)  # events from now on queue one more check
    forced = ctx.queue.take_forced(project)
    with ProjectLock(ctx.redis, f"train:{project}", wait=TRAIN_TIMEOUT_S,
                     ttl=s.job_lock_ttl):
        labeled = labeled_count(ctx.api.project(project))
        last = ctx.queue.last_trained(project)
        decision = training_due(labeled, last, forced=forced, min_labeled=s.train_min_labeled,
                                every=s.train_every, growth=s.train_growth)
        if not decision.due:
            return {"status": "not due", "reason": decision.reason}
        logger.info("project %s: training: %s", project, decision.reason)
        _progress(stage="training", reason=decision.reason)
        from backend.model.detector import resolve_device
        from backend.model.training import train_round

        try:
            result = train_round(
                project, s, ctx.api, ctx.fetcher, ctx.registry,
                device=resolve_device(s.device),
                progress=_training_progress)
        except NotEnoughLabels as exc:
            return {"status": "not enough labels", "reason": str(exc)}
        labeled = int(result.dataset["tasks_labeled"])  # what the round actually read
        ctx.queue.set_last_trained(project, labeled)
        if result.promoted:
            ctx.queue.request_pushback(project)
    # A training that finds new labels due runs once more.
    now = labeled_count(ctx.api.project(project))
    if training_due(now, labeled, forced=False, min_labeled=s.train_min_labeled,
                    every=s.train_every, growth=s.train_growth).due:
        ctx.queue.request_training(project)
    return {"status": "trained", **result.to_dict()}


def _predict_and_import(ctx: Context, project: int, version: str, tasks: list[dict],
                        predictor: Predictor, detector: Any, config: Any) -> tuple[int, int]:
    """Predict the tasks that still need this version; bulk import. (imported, failed)."""
    todo = [t for t in tasks
            if not t.get("total_annotations") and not t.get("annotations")
            and not any(isinstance(p, dict) and p.get("model_version") == version
                        for p in t.get("predictions") or [])]
    if not todo:
        return 0, 0
    items = predictor.predict(detector, todo, config)
    predictions = [{"task": task["id"], "result": item["result"], "score": item["score"],
                    "model_version": version}
                   for task, item in zip(todo, items, strict=True) if "result" in item]
    if predictions:
        ctx.api.import_predictions(project, predictions)
    return len(predictions), len(todo) - len(predictions)


def _champion_predictor(ctx: Context, project: int) -> tuple[Any, Any, Any, str] | None:
    champion = ctx.registry.champion(project)
    if champion is None:
        return None
    from backend.model.detector import checkpoint_detector

    version = str(champion["version"])
    detector = checkpoint_detector(ctx.registry.checkpoint_path(project, version), version,
                                   ctx.settings.device)
    s = ctx.settings
    predictor = Predictor(ctx.fetcher, PredictOptions(
        score_threshold=s.score_threshold, max_boxes=s.max_boxes_per_image,
        batch_size=s.predict_batch_size, time_budget=float(PREDICT_TIMEOUT_S),
        show_uncalibrated=s.prelabel_uncalibrated == "show"))
    config = parse_label_config(ctx.api.project(project)["label_config"])
    return detector, predictor, config, version


def push_back(project: int, context: Context | None = None,
              stop_after: Callable[[int], bool] | None = None) -> dict[str, Any]:
    """Pre-annotate every unlabeled task without a prediction of the champion version.

    Walks tasks in id order from a cursor kept in Redis, so a killed job resumes where it
    stopped; a task that already holds this version is skipped, so nothing is predicted twice.
    """
    ctx = context or Context(Settings.from_env())
    ctx.queue.clear_pending("pushback", project)
    with ProjectLock(ctx.redis, f"predict:{project}", wait=PREDICT_TIMEOUT_S,
                     ttl=ctx.settings.job_lock_ttl):
        found = _champion_predictor(ctx, project)
        if found is None:
            return {"status": "no champion"}
        detector, predictor, config, version = found
        shown = False
        cursor = ctx.queue.cursor(project, version)
        imported = failed = seen = 0
        while True:
            tasks = ctx.api.tasks_after(project, cursor, ctx.settings.pushback_batch)
            if not tasks:
                break
            done, bad = _predict_and_import(ctx, project, version, tasks, predictor, detector,
                                            config)
            imported, failed, seen = imported + done, failed + bad, seen + len(tasks)
            if done and not shown:
                # Labelers see predictions of the project's model_version, which Label
                # Studio accepts only once a prediction of that version exists.
                ctx.api.update_project(project, model_version=version)
                shown = True
            cursor = max(int(t["id"]) for t in tasks)
            ctx.queue.set_cursor(project, version, cursor)
            _progress(stage="push-back", version=version, tasks_seen=seen, imported=imported,
                      failed=failed, cursor=cursor)
            if stop_after is not None and stop_after(seen):
                return {"status": "stopped", "imported": imported, "cursor": cursor}
        if not shown and ctx.api.count_tasks_with_prediction(project, version):
            ctx.api.update_project(project, model_version=version)  # resumed after the import
        ctx.queue.set_pushback_done(project, version)
    logger.info("project %s: pushed %d predictions of %s (%d tasks failed)", project,
                imported, version, failed)
    return {"status": "done", "version": version, "imported": imported, "failed": failed}


def predict_new_tasks(project: int, task_ids: list[int],
                      context: Context | None = None) -> dict[str, Any]:
    """Champion predictions for tasks Label Studio just created (TASKS_CREATED)."""
    ctx = context or Context(Settings.from_env())
    if ctx.registry.champion(project) is None:
        return {"status": "no champion"}
    with ProjectLock(ctx.redis, f"predict:{project}", wait=PREDICT_TIMEOUT_S,
                     ttl=ctx.settings.job_lock_ttl):
        found = _champion_predictor(ctx, project)
        if found is None:
            return {"status": "no champion"}
        detector, predictor, config, version = found
        tasks = ctx.api.get_tasks(project, task_ids)
        imported, failed = _predict_and_import(ctx, project, version, tasks, predictor,
                                               detector, config)
    return {"status": "done", "version": version, "imported": imported, "failed": failed}


def reconcile(context: Context | None = None) -> dict[str, Any]:
    """Queue what is due for every known project: a lost webhook delays, never loses, work."""
    ctx = context or Context(Settings.from_env())
    queued: dict[str, list[int]] = {"training": [], "pushback": []}
    for project in ctx.queue.projects():
        if ctx.queue.request_training(project):
            queued["training"].append(project)
        champion = ctx.registry.champion(project)
        if champion is not None and ctx.queue.pushback_done(project) != champion["version"] \
                and ctx.queue.request_pushback(project):
            queued["pushback"].append(project)
    return queued
