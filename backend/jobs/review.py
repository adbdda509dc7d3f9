"""The review job: a promoted champion (and reconciliation) queues it; see tools/review.py."""

from __future__ import annotations

from typing import Any

from backend.core.settings import Settings
from backend.jobs.context import Context, acquire, progress
from backend.jobs.queues import PREDICT_TIMEOUT_S, TRAINING_QUEUE, ProjectLock
from backend.model.dataset import ImageCache


def review_labels(project: int, context: Context | None = None) -> dict[str, Any]:
    """Score the project's labeled tasks with out-of-sample models; mark the worst for review.

    Single flight per project; the task data writes happen under the project's `assign` lock,
    the other writer of task data, which also re-reads each task right before writing it.
    """
    from backend.model.detector import resolve_device
    from backend.tools.review import review_project

    ctx = context or Context(Settings.from_env())
    s = ctx.settings
    lock = acquire(ctx, "review", project, f"review:{project}",
                    "backend.jobs.review.review_labels", TRAINING_QUEUE, PREDICT_TIMEOUT_S)
    if lock is None:
        return {"status": "deferred", "reason": "another review of this project is running"}
    try:
        progress(stage="review")
        cache = ImageCache(s.image_cache_dir, ctx.fetcher, s.max_image_pixels)
        return review_project(
            project, s, ctx.api, cache, ctx.registry, device=resolve_device(s.device),
            write_guard=lambda: ProjectLock(ctx.redis, f"assign:{project}", wait=600,
                                            ttl=s.job_lock_ttl))
    finally:
        lock.__exit__()
