"""`mlassist worker`: RQ workers for MLAssist's queues, plus the reconciliation ticker."""

from __future__ import annotations

import logging
import threading

from rq import Queue, Worker

from backend.jobs.queues import JobQueue, connect
from backend.settings import Settings

logger = logging.getLogger(__name__)


def _reconcile_ticker(settings: Settings, stop: threading.Event) -> None:
    jobs = JobQueue(connect(settings.redis_url))
    while not stop.is_set():
        try:
            if jobs.request_reconcile(settings.reconcile_interval):
                logger.info("queued a reconciliation pass")
        except Exception as exc:  # noqa: BLE001 - Redis may be restarting; try next tick
            logger.warning("could not queue reconciliation: %s", exc)
        stop.wait(min(settings.reconcile_interval, 60))


def run_worker(settings: Settings, queues: list[str], burst: bool = False,
               reconcile: bool = True) -> None:
    """Work the given queues until stopped (or, with `burst`, until they are empty)."""
    # Import torch once in the parent: each job runs in a forked child that inherits it.
    import torch
    import torchvision  # noqa: F401

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)  # inherited by each job's work horse

    redis = connect(settings.redis_url)
    stop = threading.Event()
    if reconcile and not burst:
        threading.Thread(target=_reconcile_ticker, args=(settings, stop), daemon=True,
                         name="reconcile-ticker").start()
    worker = Worker([Queue(name, connection=redis) for name in queues], connection=redis)
    logger.info("worker %s on queues %s", worker.name, ", ".join(queues))
    try:
        worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level.upper())
    finally:
        stop.set()
