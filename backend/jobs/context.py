"""What every job shares: the adapters it uses (built from the worker's settings), its
progress in the RQ job's meta, and the project lock it takes or defers on."""

from __future__ import annotations

from typing import Any

from rq import get_current_job

from backend.core.settings import Settings
from backend.jobs.queues import JobQueue, ProjectLock, connect
from backend.labelstudio.client import LabelStudioAPI
from backend.media.images import ImageFetcher
from backend.model.registry import Registry, open_registry

BUSY_RETRY_S = 30  # a job that finds its project busy comes back this much later


class Context:
    """The adapters a job uses, built from settings (tests pass their own)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = connect(settings.redis_url)
        self.queue = JobQueue(self.redis)
        self.fetcher = ImageFetcher.from_settings(settings)
        self.api = LabelStudioAPI(self.fetcher.auth)
        self.registry: Registry = open_registry(settings)


def progress(**meta: Any) -> None:
    """Record how far the running job is (its RQ meta; nothing outside a worker)."""
    job = get_current_job()
    if job is not None:
        job.meta.update(meta)
        job.save_meta()


def job_id() -> str | None:
    """The running RQ job's id (None when called directly)."""
    job = get_current_job()
    return str(job.id) if job is not None else None


def acquire(ctx: Context, kind: str, project: int, lock_name: str, func: str,
            queue: str, timeout: int) -> ProjectLock | None:
    """Take the project's lock, or, inside a worker, re-queue this job for later (a worker
    never waits hours on another job's lock); direct calls wait."""
    running = job_id()
    lock = ProjectLock(ctx.redis, lock_name, wait=0 if running else timeout,
                       ttl=ctx.settings.job_lock_ttl)
    try:
        lock.__enter__()
    except TimeoutError:
        ctx.queue.defer(kind, project, running, queue, func, (project,), timeout,
                        delay_s=BUSY_RETRY_S)
        return None
    ctx.queue.release_pending(kind, project, running)
    return lock
