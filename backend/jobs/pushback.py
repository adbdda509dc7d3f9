"""Pre-labeling jobs: the push-back over the unlabeled backlog after a promotion, and the
champion's predictions for tasks Label Studio just created (TASKS_CREATED).

Predictions reach Label Studio in bulk imports. An import's cost has a part that grows with
the project, not with the import (LABEL_STUDIO_FACTS.md; measured by benchmarks/scale.py), so
a job gathers predictions until that part is a small share of the forward time they took
(policy.import_batch), at most MAX_IMPORT_BATCH, which also bounds what a killed job redoes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from backend.core.errors import LabelStudioError
from backend.core.settings import Settings
from backend.jobs.context import Context, acquire, progress
from backend.jobs.policy import import_batch
from backend.jobs.queues import PREDICT_QUEUE, PREDICT_TIMEOUT_S, ProjectLock
from backend.labelstudio.label_config import parse_label_config
from backend.serving.ordering import options_for
from backend.serving.predictions import PredictOptions, Predictor
from backend.tools.priority import import_predictions

logger = logging.getLogger(__name__)

# Images per forward in jobs: larger batches run ONNX Runtime about 20 % faster per image; no
# labeler waits on a job, unlike on /predict (PREDICT_BATCH_SIZE)
PUSHBACK_FORWARD_BATCH = 16
# A bulk import's fixed cost may take at most this share of the forward time of its batch...
IMPORT_SHARE = 0.1
# ...within at most this many predictions (their memory, and what a killed job predicts again).
MAX_IMPORT_BATCH = 10_000


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


class _Gathered:
    """Predicted pages waiting for one bulk import, and how many tasks to gather before it."""

    def __init__(self, ctx: Context, project: int, floor: int, clock: StageClock) -> None:
        self.ctx, self.project, self.clock = ctx, project, clock
        self.floor = self.due_at = floor
        self.predicted = 0  # tasks given to the model so far (for its time per task)
        self._reset()

    def _reset(self) -> None:
        self.predictions: list[dict] = []
        self.failed = self.seen = 0
        self.cursor: int | None = None

    def add(self, predictions: list[dict], failed: int, seen: int, cursor: int | None) -> bool:
        """Gather a predicted page; True when what is gathered is due for an import."""
        self.predictions += predictions
        self.failed, self.seen, self.cursor = self.failed + failed, self.seen + seen, cursor
        self.predicted += len(predictions) + failed
        return self.seen >= self.due_at

    def take(self) -> tuple[list[dict], int, int, int | None]:
        taken = (self.predictions, self.failed, self.seen, self.cursor)
        self._reset()
        return taken

    def send(self, predictions: list[dict], failed: int, seen: int,
             cursor: int | None) -> tuple[int, int, int, int | None]:
        """Import what was taken (in the io thread); then size the next batch."""
        if predictions:
            started = time.perf_counter()
            self.clock.timed("import", import_predictions, self.ctx.api, self.project,
                             predictions, self.ctx.settings.order_priority_field == "true")
            forward = self.clock.seconds.get("forward", 0.0) / max(1, self.predicted)
            self.due_at = import_batch(time.perf_counter() - started, forward, self.floor,
                                       MAX_IMPORT_BATCH, IMPORT_SHARE)
        return len(predictions), failed, seen, cursor


class _PushBackWalk:
    """The state of one push-back pass: counts, the cursor, and what an import does."""

    def __init__(self, ctx: Context, project: int, version: str,
                 stop_after: Callable[[int], bool] | None, clock: StageClock) -> None:
        self.ctx, self.project, self.version = ctx, project, version
        self.cursor = ctx.queue.cursor(project, version)
        self.stop_after = stop_after
        self.imported = self.failed = self.seen = 0
        self.shown = False
        self.gathered = _Gathered(ctx, project, ctx.settings.pushback_batch, clock)

    def finish(self, page: tuple[int, int, int, int | None]) -> bool:
        """Record an import; True when `stop_after` says to stop here."""
        done, bad, seen, cursor = page
        self.imported, self.failed, self.seen = (self.imported + done, self.failed + bad,
                                                 self.seen + seen)
        if done and not self.shown:
            # Labelers see predictions of the project's model_version, which Label Studio
            # accepts only once a prediction of that version exists.
            self.ctx.api.update_project(self.project, model_version=self.version)
            self.shown = True
        if cursor is not None:
            self.cursor = cursor
            self.ctx.queue.set_cursor(self.project, self.version, cursor)
        progress(stage="push-back", version=self.version, tasks_seen=self.seen,
                 imported=self.imported, failed=self.failed, cursor=self.cursor,
                 import_batch=self.gathered.due_at)
        return self.stop_after is not None and self.stop_after(self.seen)

    def stopped(self) -> dict[str, Any]:
        return {"status": "stopped", "imported": self.imported, "cursor": self.cursor}


def _lacking(ctx: Context, project: int, version: str) -> str | None:
    """The version to list tasks without, or None to list every unlabeled task with its
    predictions. Label Studio filters versions by substring, so the cheaper listing is used
    only when no other version in the project contains this one (`-v1` in `-v10`)."""
    try:
        others = [name for name in ctx.api.model_versions(project) if name != version]
    except LabelStudioError as exc:
        logger.warning("project %s: no model versions from Label Studio (%s); listing tasks "
                       "with their predictions", project, exc)
        return None
    return None if any(version in name for name in others) else version


def _walk(ctx: Context, project: int, walk: _PushBackWalk, predict: Callable[[list[dict]], Any],
          clock: StageClock) -> bool:
    """List, predict and import the backlog from the cursor; False when stopped early.

    Tasks that already hold the version are left out by Label Studio where that is exact
    (`_lacking`), else listed with their predictions and skipped here. Three stages overlap:
    Label Studio lists the next page and imports the gathered pages'
    predictions while this page is predicted; pages predicted while an import is still
    running join the next one. The cursor moves only after an import, so a killed job resumes
    at the first page not imported."""
    gathered = walk.gathered
    lacking = _lacking(ctx, project, walk.version)
    with ThreadPoolExecutor(2, thread_name_prefix="pushback-io") as io:
        batch = ctx.settings.pushback_batch
        page = io.submit(clock.timed, "list", ctx.api.tasks_after, project, walk.cursor, batch,
                         lacking)
        importing: Future | None = None
        while tasks := page.result():
            page_cursor = max(int(t["id"]) for t in tasks)
            page = io.submit(clock.timed, "list", ctx.api.tasks_after, project, page_cursor,
                             batch, lacking)
            predictions, bad = predict(tasks)
            if not gathered.add(predictions, bad, len(tasks), page_cursor):
                continue
            if importing is not None:
                if not importing.done() and gathered.seen < MAX_IMPORT_BATCH:
                    continue  # Label Studio is still importing: predict on, import more then
                if walk.finish(importing.result()):
                    page.cancel()
                    return False
            importing = io.submit(gathered.send, *gathered.take())
        if importing is not None and walk.finish(importing.result()):
            return False
        if gathered.seen and walk.finish(gathered.send(*gathered.take())):
            return False
    return True


def push_back(project: int, context: Context | None = None,
              stop_after: Callable[[int], bool] | None = None) -> dict[str, Any]:
    """Pre-annotate every unlabeled task without a prediction of the champion version.

    Walks tasks in id order from a cursor kept in Redis, so a killed job resumes where it
    stopped; a task that already holds this version is skipped, so nothing is predicted twice.
    A pass with failed tasks is not marked done: reconciliation runs it again (from the start;
    the tasks already predicted are skipped).
    """
    ctx = context or Context(Settings.from_env())
    lock = acquire(ctx, "pushback", project, f"predict:{project}",
                   "backend.jobs.pushback.push_back", PREDICT_QUEUE, PREDICT_TIMEOUT_S)
    if lock is None:
        return {"status": "deferred", "reason": "the project's pre-labeling is busy"}
    try:
        clock = StageClock()
        found = _champion_predictor(ctx, project, clock)
        if found is None:
            return {"status": "no champion"}
        detector, predictor, config, version = found
        walk = _PushBackWalk(ctx, project, version, stop_after, clock)

        def predict(tasks: list[dict]) -> tuple[list[dict], int]:
            lock.ensure()
            return _predictions(version, tasks, predictor, detector, config)

        walking = time.perf_counter()
        if not _walk(ctx, project, walk, predict, clock):
            return walk.stopped()
        clock.add("walk", time.perf_counter() - walking)  # wall time from first list to end
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
        clock = StageClock()
        found = _champion_predictor(ctx, project, clock)
        if found is None:
            return {"status": "no champion"}
        detector, predictor, config, version = found
        gathered = _Gathered(ctx, project, ctx.settings.pushback_batch, clock)
        imported = failed = 0
        # A page at a time, imported in gathered batches: a 5,000-task import never sits in
        # memory whole, and a large project does not pay the import's fixed cost per page.
        for tasks in ctx.api.task_pages_by_id(project, task_ids):
            lock.ensure()
            if gathered.add(*_predictions(version, tasks, predictor, detector, config),
                            len(tasks), None):
                done, lost, _, _ = gathered.send(*gathered.take())
                imported, failed = imported + done, failed + lost
        done, lost, _, _ = gathered.send(*gathered.take())
        imported, failed = imported + done, failed + lost
    finally:
        lock.__exit__()
    return {"status": "done", "version": version, "imported": imported, "failed": failed,
            "stage_seconds": clock.rounded()}
