"""`mlassist worker`: RQ workers for MLAssist's queues, plus the reconciliation ticker."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker

from backend.core.settings import Settings
from backend.jobs import handback
from backend.jobs.queues import JobQueue, connect

logger = logging.getLogger(__name__)

RESTART_DELAYS_S = (1, 2, 4, 8, 15, 30)  # between restarts of a worker that quit on its own
STEADY_S = 60  # a worker that ran this long before quitting restarts at the first delay


class _Worker(Worker):
    """RQ's worker that remembers whether a signal asked it to stop, that asks its running
    job to hand itself back then (backend/jobs/handback.py), and that can exit after Redis
    restarted under it (so `run_worker` can start it again)."""

    stop_asked = False
    stop_timeout: float = 240.0  # WORKER_STOP_TIMEOUT

    def setup_work_horse_signals(self) -> None:
        super().setup_work_horse_signals()
        handback.install_in_horse()

    def handle_warm_shutdown_request(self) -> None:
        self.stop_asked = True
        super().handle_warm_shutdown_request()
        horse = self.horse_pid
        if not horse:
            return
        logger.info("worker %s: asking job %s to hand itself back; killing it in %g s if it "
                    "still runs", self.name, self.get_current_job_id(), self.stop_timeout)
        with contextlib.suppress(ProcessLookupError):
            os.kill(horse, handback.HAND_BACK_SIGNAL)
        timer = threading.Timer(self.stop_timeout, self._kill_late_horse, args=(horse,))
        timer.daemon = True
        timer.start()

    def _kill_late_horse(self, horse: int) -> None:
        """Past WORKER_STOP_TIMEOUT: end the job before the kubelet's SIGKILL ends us, so RQ
        records it as failed and its retry runs it on another worker."""
        if self.horse_pid == horse:
            logger.warning("worker %s: job %s did not finish within %g s of SIGTERM; killing "
                           "it (its retry runs elsewhere)", self.name,
                           self.get_current_job_id(), self.stop_timeout)
            self.kill_horse()

    def unsubscribe(self) -> None:
        """RQ's unsubscribe, minus the re-subscription on reconnect.

        After a Redis restart the UNSUBSCRIBE that RQ sends reconnects first, and redis-py
        5.3's PubSub then re-subscribes inside the lock it already holds: the worker hung
        for good at exit (redis/redis-py#3640) and never got to start again.
        """
        if self.pubsub_thread and self.pubsub.connection is not None:
            self.pubsub.connection.deregister_connect_callback(self.pubsub.on_connect)
        super().unsubscribe()


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
    try:
        restarts = 0
        while True:
            worker = _Worker([Queue(name, connection=redis) for name in queues],
                             connection=redis)
            worker.stop_timeout = settings.worker_stop_timeout
            logger.info("worker %s on queues %s", worker.name, ", ".join(queues))
            started = time.monotonic()
            try:
                worker.work(burst=burst, with_scheduler=True,
                            logging_level=settings.log_level.upper())
            except RedisError as exc:  # raised by its teardown while Redis is down
                logger.warning("worker %s: Redis unreachable at exit: %s", worker.name, exc)
            if burst or worker.stop_asked:
                return
            # RQ's loop quits on a Redis error anywhere but its dequeue, e.g. when Redis
            # restarts while a job runs; a lost worker must not wait for a human.
            restarts = 0 if time.monotonic() - started > STEADY_S else restarts + 1
            delay = RESTART_DELAYS_S[min(restarts, len(RESTART_DELAYS_S) - 1)]
            logger.warning("worker %s quit without being asked to; starting again in %d s, "
                           "once Redis answers", worker.name, delay)
            if not _wait_for_redis(redis, delay):
                return
            if worker.scheduler is not None:
                # Its scheduler process is gone but its locks live on for 61 s, and RQ retries
                # taking them only every 10 min: deferred jobs and retries would wait that long.
                with contextlib.suppress(RedisError):
                    worker.scheduler.release_locks()
    finally:
        stop.set()


def _wait_for_redis(redis: Redis, delay: float) -> bool:
    """Sleep `delay`, then until Redis answers; False if SIGINT/SIGTERM came meanwhile."""
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # RQ's handlers belong to the worker gone
        signal.signal(sig, lambda *_: stopping.set())
    if stopping.wait(delay):
        return False
    while True:
        try:
            redis.ping()
            return True
        except RedisError:
            if stopping.wait(1.0):
                return False
