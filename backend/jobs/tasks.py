"""RQ job functions: importable top-level functions with primitive arguments.

Each builds what it needs from the worker's environment (Settings.from_env), so any worker on
any machine sharing the Redis and the registry can run it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from rq import get_current_job

from backend.core.errors import HandedBack, NotEnoughLabels
from backend.core.settings import Settings
from backend.jobs import handback
from backend.jobs.policy import training_due
from backend.jobs.queues import (
    HOUSEKEEPING_QUEUE,
    PREDICT_QUEUE,
    PREDICT_TIMEOUT_S,
    RECONCILE_TIMEOUT_S,
    TRAIN_TIMEOUT_S,
    TRAINING_QUEUE,
    JobQueue,
    ProjectLock,
    connect,
)
from backend.labelstudio.client import LabelStudioAPI, labeled_task_count
from backend.labelstudio.label_config import parse_label_config
from backend.media.images import ImageFetcher
from backend.model.registry import Registry, open_registry
from backend.serving.ordering import options_for
from backend.serving.predictions import PredictOptions, Predictor
from backend.tools.priority import import_predictions

logger = logging.getLogger(__name__)

BUSY_RETRY_S = 30  # a job that finds its project busy comes back this much later
# Images per forward in jobs: larger batches run ONNX Runtime about 20 % faster per image; no
# labeler waits on a job, unlike on /predict (PREDICT_BATCH_SIZE)
PUSHBACK_FORWARD_BATCH = 16


class Context:
    """The adapters a job uses, built from settings (tests pass their own)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = connect(settings.redis_url)
        self.queue = JobQueue(self.redis)
        self.fetcher = ImageFetcher.from_settings(settings)
        self.api = LabelStudioAPI(self.fetcher.auth)
        self.registry: Registry = open_registry(settings)


def _progress(**meta: Any) -> None:
    job = get_current_job()
    if job is not None:
        job.meta.update(meta)
        job.save_meta()


def _training_progress(step: int, total: int, loss: float) -> None:
    handback.raise_if_asked(f"training at step {step}/{total}")
    if step % 25 == 0 or step == total:
        _progress(stage="training", step=step, steps=total, loss=round(loss, 4))


def _job_id() -> str | None:
    job = get_current_job()
    return str(job.id) if job is not None else None


def _acquire(ctx: Context, kind: str, project: int, lock_name: str, func: str,
             queue: str, timeout: int) -> ProjectLock | None:
    """Take the project's lock, or, inside a worker, re-queue this job for later (a worker
    never waits hours on another job's lock); direct calls wait."""
    job_id = _job_id()
    lock = ProjectLock(ctx.redis, lock_name, wait=0 if job_id else timeout,
                       ttl=ctx.settings.job_lock_ttl)
    try:
        lock.__enter__()
    except TimeoutError:
        ctx.queue.defer(kind, project, job_id, queue, func, (project,), timeout,
                        delay_s=BUSY_RETRY_S)
        return None
    ctx.queue.release_pending(kind, project, job_id)
    return lock


def train_project(project: int, context: Context | None = None) -> dict[str, Any]:
    """Train the project if the policy says so (or it was asked to); then queue what follows."""
    ctx = context or Context(Settings.from_env())
    s = ctx.settings
    lock = _acquire(ctx, "train", project, f"train:{project}",
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
        _progress(stage="training", reason=decision.reason)
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


def _predictions(version: str, tasks: list[dict], predictor: Predictor, detector: Any,
                 config: Any) -> tuple[list[dict], int]:
    """Predictions of the tasks that still need this version: (predictions, failed)."""
    todo = [t for t in tasks
            if not t.get("total_annotations") and not t.get("annotations")
            and not any(isinstance(p, dict) and p.get("model_version") == version
                        for p in t.get("predictions") or [])]
    if not todo:
        return [], 0
    items = predictor.predict(detector, todo, config)
    predictions = [{"task": task["id"], "result": item["result"], "score": item["score"],
                    "model_version": version, **{k: item[k] for k in ("priority",) if k in item}}
                   for task, item in zip(todo, items, strict=True) if "result" in item]
    return predictions, len(todo) - len(predictions)


def _predict_and_import(ctx: Context, project: int, version: str, tasks: list[dict],
                        predictor: Predictor, detector: Any, config: Any) -> tuple[int, int]:
    """Predict the tasks that still need this version; bulk import. (imported, failed)."""
    predictions, failed = _predictions(version, tasks, predictor, detector, config)
    if predictions:
        import_predictions(ctx.api, project, predictions,
                           ctx.settings.order_priority_field == "true")
    return len(predictions), failed


class StageClock:
    """Seconds spent per stage, summed over threads (where a push-back's time went)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def timed(self, stage: str, call: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args)
        finally:
            self.add(stage, time.perf_counter() - started)

    def rounded(self) -> dict[str, float]:
        return {stage: round(value, 2) for stage, value in sorted(self.seconds.items())}


def _champion_predictor(ctx: Context, project: int,
                        clock: StageClock | None = None) -> tuple[Any, Any, Any, str] | None:
    champion = ctx.registry.champion(project)
    if champion is None:
        return None
    from backend.model.detector import checkpoint_detector

    version = str(champion["version"])
    detector = checkpoint_detector(ctx.registry.checkpoint_path(project, version), version,
                                   ctx.settings.device, ctx.settings.inference_runtime)
    s = ctx.settings
    predictor = Predictor(ctx.fetcher, PredictOptions(
        score_threshold=s.score_threshold, max_boxes=s.max_boxes_per_image,
        batch_size=max(s.predict_batch_size, PUSHBACK_FORWARD_BATCH),
        time_budget=float(PREDICT_TIMEOUT_S),
        show_uncalibrated=s.prelabel_uncalibrated == "show", order=options_for(s, champion)),
        on_stage=clock.add if clock is not None else None)
    config = parse_label_config(ctx.api.project(project)["label_config"])
    return detector, predictor, config, version


class _PushBackWalk:
    """The state of one push-back pass: counts, the cursor, and what a finished page does."""

    def __init__(self, ctx: Context, project: int, version: str,
                 stop_after: Callable[[int], bool] | None, clock: StageClock) -> None:
        self.ctx, self.project, self.version = ctx, project, version
        self.clock = clock
        self.cursor = ctx.queue.cursor(project, version)
        self.stop_after = stop_after
        self.imported = self.failed = self.seen = 0
        self.shown = False

    def import_page(self, predictions: list[dict], failed: int, seen: int,
                    cursor: int) -> tuple[int, int, int, int]:
        if predictions:
            self.clock.timed("import", import_predictions, self.ctx.api, self.project,
                             predictions, self.ctx.settings.order_priority_field == "true")
        return len(predictions), failed, seen, cursor

    def finish(self, page: tuple[int, int, int, int]) -> bool:
        """Record an imported page; True when `stop_after` says to stop here."""
        done, bad, seen, cursor = page
        self.imported, self.failed, self.seen = (self.imported + done, self.failed + bad,
                                                 self.seen + seen)
        if done and not self.shown:
            # Labelers see predictions of the project's model_version, which Label Studio
            # accepts only once a prediction of that version exists.
            self.ctx.api.update_project(self.project, model_version=self.version)
            self.shown = True
        self.cursor = cursor
        self.ctx.queue.set_cursor(self.project, self.version, cursor)
        _progress(stage="push-back", version=self.version, tasks_seen=self.seen,
                  imported=self.imported, failed=self.failed, cursor=cursor)
        return self.stop_after is not None and self.stop_after(self.seen)

    def stopped(self) -> dict[str, Any]:
        return {"status": "stopped", "imported": self.imported, "cursor": self.cursor}


def push_back(project: int, context: Context | None = None,
              stop_after: Callable[[int], bool] | None = None) -> dict[str, Any]:
    """Pre-annotate every unlabeled task without a prediction of the champion version.

    Walks tasks in id order from a cursor kept in Redis, so a killed job resumes where it
    stopped; a task that already holds this version is skipped, so nothing is predicted twice.
    A pass with failed tasks is not marked done: reconciliation runs it again (from the start;
    the tasks already predicted are skipped).
    """
    ctx = context or Context(Settings.from_env())
    lock = _acquire(ctx, "pushback", project, f"predict:{project}",
                    "backend.jobs.tasks.push_back", PREDICT_QUEUE, PREDICT_TIMEOUT_S)
    if lock is None:
        return {"status": "deferred", "reason": "the project's pre-labeling is busy"}
    try:
        clock = StageClock()
        found = _champion_predictor(ctx, project, clock)
        if found is None:
            return {"status": "no champion"}
        detector, predictor, config, version = found
        walk = _PushBackWalk(ctx, project, version, stop_after, clock)
        # Three stages overlap: Label Studio lists the next page and imports the previous
        # page's predictions while this page is predicted. The cursor moves only after a
        # page's import, so a killed job resumes at the first page not imported.
        with ThreadPoolExecutor(2, thread_name_prefix="pushback-io") as io:
            batch = ctx.settings.pushback_batch
            page = io.submit(clock.timed, "list", ctx.api.tasks_after, project, walk.cursor,
                             batch)
            importing: Future | None = None
            while True:
                tasks = page.result()
                if not tasks:
                    break
                page_cursor = max(int(t["id"]) for t in tasks)
                page = io.submit(clock.timed, "list", ctx.api.tasks_after, project,
                                 page_cursor, batch)
                lock.ensure()
                predictions, bad = _predictions(version, tasks, predictor, detector, config)
                if importing is not None and walk.finish(importing.result()):
                    page.cancel()
                    return walk.stopped()
                importing = io.submit(walk.import_page, predictions, bad, len(tasks),
                                      page_cursor)
            if importing is not None and walk.finish(importing.result()):
                return walk.stopped()
        shown, imported, failed = walk.shown, walk.imported, walk.failed
        if not shown and ctx.api.count_tasks_with_prediction(project, version):
            ctx.api.update_project(project, model_version=version)  # resumed after the import
        ctx.queue.clear_cursor(project, version)
        if failed == 0:
            total = int(ctx.api.project(project).get("task_number") or 0)
            ctx.queue.set_pushback_done(project, version, total)
    finally:
        lock.__exit__()
    logger.info("project %s: pushed %d predictions of %s (%d tasks failed); seconds per "
                "stage: %s", project, imported, version, failed, clock.rounded())
    return {"status": "done", "version": version, "imported": imported, "failed": failed,
            "stage_seconds": clock.rounded()}


def predict_new_tasks(project: int, task_ids: list[int],
                      context: Context | None = None) -> dict[str, Any]:
    """Champion predictions for tasks Label Studio just created (TASKS_CREATED)."""
    ctx = context or Context(Settings.from_env())
    if ctx.registry.champion(project) is None:
        return {"status": "no champion"}
    lock = ProjectLock(ctx.redis, f"predict:{project}", wait=0, ttl=ctx.settings.job_lock_ttl)
    try:
        lock.__enter__()
    except TimeoutError:
        # A push-back is running: new tasks have the highest ids, so its walk reaches them;
        # a pending push-back makes sure of it.
        ctx.queue.request_pushback(project)
        return {"status": "left to the push-back"}
    try:
        found = _champion_predictor(ctx, project)
        if found is None:
            return {"status": "no champion"}
        detector, predictor, config, version = found
        imported = failed = 0
        # A page at a time: a 5,000-task import never sits in memory whole.
        for tasks in ctx.api.task_pages_by_id(project, task_ids):
            lock.ensure()
            done, lost = _predict_and_import(ctx, project, version, tasks, predictor,
                                             detector, config)
            imported, failed = imported + done, failed + lost
    finally:
        lock.__exit__()
    return {"status": "done", "version": version, "imported": imported, "failed": failed}


def top_up_assignments(project: int, context: Context | None = None) -> dict[str, Any]:
    """Refill each labeler's batch (`mlassist assign`) after labels or new tasks."""
    from backend.tools.assign import top_up

    ctx = context or Context(Settings.from_env())
    lock = _acquire(ctx, "assign", project, f"assign:{project}",
                    "backend.jobs.tasks.top_up_assignments", HOUSEKEEPING_QUEUE,
                    RECONCILE_TIMEOUT_S)
    if lock is None:
        return {"status": "deferred: another top-up is running"}
    try:  # _acquire entered the lock; the split is read under it (`assign` writes it so)
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
