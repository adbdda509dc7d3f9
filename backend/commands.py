"""The operator commands behind `mlassist train` and `mlassist models` (CLI output only)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from backend.errors import MLAssistError
from backend.images import ImageFetcher
from backend.labelstudio import LabelStudioAPI, LabelStudioAuth
from backend.model.registry import open_registry
from backend.settings import Settings


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def export_coco_command(settings: Settings, project: int, out: Path,
                        images_dir: Path | None) -> None:
    """Write the project's labeled boxes as COCO; print what was written as JSON."""
    from backend.coco import export_coco

    fetcher = ImageFetcher.from_settings(settings)
    report = export_coco(LabelStudioAPI(fetcher.auth), fetcher, project, out, images_dir)
    _out(json.dumps({"output": str(out), **report.to_dict()}))


def import_coco_command(settings: Settings, project: int, path: Path, images: str,
                        as_what: str | None) -> None:
    """Create tasks from a COCO file (idempotent); print what was done as JSON."""
    from backend.coco import import_coco, read_coco

    api = LabelStudioAPI(LabelStudioAuth(settings.label_studio_url,
                                         settings.label_studio_api_key))
    report = import_coco(api, project, read_coco(path), images, as_what)
    _out(json.dumps(report.to_dict()))


def assign_command(settings: Settings, project: int, labelers: list[str], batch: int,
                   overlap: int, stop: bool) -> None:
    """Set (or stop) a project's workload split and top the batches up now."""
    from redis.exceptions import RedisError

    from backend.assign import top_up
    from backend.jobs.queues import JobQueue, ProjectLock, connect

    redis = connect(settings.redis_url)
    queue = JobQueue(redis)
    try:
        if stop:
            queue.set_assignment(project, None)
            _out(json.dumps({"project": project, "status": "batches are no longer topped up"}))
            return
        api = LabelStudioAPI(LabelStudioAuth(settings.label_studio_url,
                                             settings.label_studio_api_key))
        with ProjectLock(redis, f"assign:{project}", wait=120, ttl=settings.job_lock_ttl):
            # Under the lock the workers' top-ups take too, so none works from the old split.
            report = top_up(api, project, labelers, batch, overlap)
            queue.set_assignment(project, {"labelers": report["labelers"], "batch": batch,
                                           "overlap": overlap})
        queue.remember_project(project)
    except RedisError as exc:
        raise MLAssistError(f"Redis at REDIS_URL is unreachable ({type(exc).__name__}); "
                            "workers top the batches up through it") from None
    _out(json.dumps({"project": project, **report}))


def train_command(settings: Settings, project: int, steps: int | None) -> None:
    """Run one training round in the foreground with a progress bar; print the outcome."""
    from tqdm import tqdm

    from backend.model.detector import resolve_device
    from backend.model.training import train_round

    fetcher = ImageFetcher.from_settings(settings)
    auth = fetcher.auth
    bar: tqdm | None = None

    def progress(step: int, total: int, loss: float) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=f"project {project}", unit="step",
                       disable=None)  # disable=None: no bar when not on a terminal
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    try:
        result = train_round(project, settings, LabelStudioAPI(auth), fetcher,
                             open_registry(settings), steps=steps,
                             device=resolve_device(settings.device), progress=progress)
    finally:
        if bar is not None:
            bar.close()
    _out(json.dumps(result.to_dict(), indent=1, default=str))
    verdict = "promoted to champion" if result.promoted else "not promoted"
    _out(f"{result.version}: AP50 {result.metrics['ap50']:.3f}, AP {result.metrics['ap']:.3f} "
         f"on {result.val_images} held-out images; {verdict}: {result.reason}")
    for entry in result.calibration.values():
        if entry.get("note"):
            _out(entry["note"])


def _row(version: dict[str, Any], champion: str | None) -> str:
    metrics = version.get("metrics") or {}
    mark = "*" if version["version"] == champion else " "
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(version.get("created_at", 0)))
    kept = "" if version.get("checkpoint") else " (pruned)"
    return (f"{mark} {version['version']:<44} {version.get('status', ''):<9} "
            f"AP50 {metrics.get('ap50', 0):.3f}  AP {metrics.get('ap', 0):.3f}  "
            f"labels {version.get('train_labels', 0):>5}  {created}{kept}")


def models_command(settings: Settings, project: int, action: str, version: str | None) -> None:
    """List, show, promote or roll back a project's model versions."""
    registry = open_registry(settings)
    if action == "list":
        champion = registry.champion(project)
        versions = registry.versions(project)
        if not versions:
            _out(f"project {project} has no trained versions yet")
        for entry in versions:
            _out(_row(entry, champion["version"] if champion else None))
    elif action == "show":
        if version is None:
            raise MLAssistError("models show needs a version")
        _out(json.dumps(registry.record(project, version), indent=1, default=str))
    elif action == "promote":
        if version is None:
            raise MLAssistError("models promote needs a version")
        registry.promote(project, version)
        _out(f"project {project}: champion is now {version}")
    elif action == "rollback":
        restored = registry.rollback(project, version)
        _out(f"project {project}: rolled back; champion is now {restored}")


def _context(settings: Settings) -> Any:
    from backend.jobs.tasks import Context

    return Context(settings)


def reconcile_command(settings: Settings, projects: list[int]) -> None:
    """Queue whatever is due now (the same pass the workers run periodically)."""
    from backend.jobs.tasks import reconcile

    ctx = _context(settings)
    for project in projects:
        ctx.queue.remember_project(project)
    _out(json.dumps(reconcile(ctx)))


def status_command(settings: Settings, project: int) -> None:
    from backend.jobs.status import project_status

    ctx = _context(settings)
    _out(json.dumps(project_status(project, settings, ctx.api, ctx.registry, ctx.queue),
                    indent=1, default=str))


def connect_command(settings: Settings, project: int, labels: str | None) -> None:
    """Connect the backend to a project; running it again changes nothing."""
    from backend.connect import connect_project

    auth = LabelStudioAuth(settings.label_studio_url, settings.label_studio_api_key)
    for change in connect_project(settings, LabelStudioAPI(auth), project,
                                  [x.strip() for x in labels.split(",")] if labels else None):
        _out(change)


# An idle rq 2.x worker beats once per blocking dequeue, every worker_ttl - 15 = 405 s.
WORKER_HEARTBEAT_MAX_AGE = 480.0


def healthcheck_command(settings: Settings, what: str) -> int:
    """A container health check: 0 when this host's worker beat in Redis within 8 minutes
    (rq's idle heartbeat interval is under 7), or when the sync
    touched SYNC_HEARTBEAT_FILE within three intervals (at least 5 minutes)."""
    import os
    import socket
    from datetime import UTC, datetime

    if what == "sync":
        if not settings.sync_heartbeat_file:
            _out("SYNC_HEARTBEAT_FILE is not set")
            return 1
        try:
            age = time.time() - os.stat(settings.sync_heartbeat_file).st_mtime
        except OSError:
            _out("the sync has not started a pass yet")
            return 1
        limit = max(3 * settings.sync_interval, 300)
        _out(f"last sync heartbeat {age:.0f} s ago (limit {limit} s)")
        return 0 if age <= limit else 1
    from redis.exceptions import RedisError
    from rq import Worker

    from backend.jobs.queues import connect

    host = socket.gethostname()
    now = datetime.now(UTC)
    try:
        workers = Worker.all(connection=connect(settings.redis_url))
    except RedisError as exc:
        _out(f"Redis is unreachable ({type(exc).__name__})")
        return 1
    for worker in workers:
        beat = worker.last_heartbeat
        if worker.hostname == host and beat is not None:
            age = (now - beat.replace(tzinfo=beat.tzinfo or UTC)).total_seconds()
            if age <= WORKER_HEARTBEAT_MAX_AGE:
                _out(f"worker {worker.name}: heartbeat {age:.0f} s ago")
                return 0
    _out(f"no worker on {host} beat in the last {WORKER_HEARTBEAT_MAX_AGE:.0f} s")
    return 1
