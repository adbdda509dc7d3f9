"""`mlassist metrics`: Prometheus metrics of the queues, the workers, training and push-back.

An exporter that reads Redis at each scrape, rather than metrics served by the workers: the
GPU workers scale to zero, and a worker that is not there cannot be scraped, while what they
did lives on in Redis (RQ's queues and registries, `JobQueue.record_training`, the running
jobs' progress meta). It reads with plain LLEN/ZCARD/HGET, so a scrape never runs RQ's
registry clean-ups behind the workers' backs, and it counts what KEDA scales on.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any, cast

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from backend.core.settings import Settings
from backend.jobs.queues import ALL_QUEUES, PREDICT_QUEUE, TRAINING_QUEUE, JobQueue, connect

logger = logging.getLogger(__name__)

TRAINING_OUTCOMES = ("promoted", "rejected", "handed_back")


def _registries(queue: Queue) -> dict[str, str]:
    """The Redis key of each state a queue's jobs can be in (what KEDA reads, too)."""
    return {"running": StartedJobRegistry(queue=queue).key,
            "scheduled": ScheduledJobRegistry(queue=queue).key,
            "failed": FailedJobRegistry(queue=queue).key}


def _per_project(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=["project"])


class JobsCollector(Collector):
    """Reads the queues and the jobs' bookkeeping from Redis at each collect()."""

    def __init__(self, redis: Redis, now: Any = time.time) -> None:
        self.redis = redis
        self.jobs = JobQueue(redis)
        self.now = now

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mlassist_redis_up", "1 when the exporter could read Redis")
        try:
            families = [*self._queues(), *self._projects(), *self._running()]
        except RedisError as exc:
            logger.warning("cannot read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _queues(self) -> list[Metric]:
        jobs = GaugeMetricFamily("mlassist_queue_jobs", "Jobs of each queue by state: queued "
                                 "(waiting in the queue), running, scheduled (deferred, or a "
                                 "retry waiting), failed (kept 7 days)", labels=["queue", "state"])
        oldest = GaugeMetricFamily("mlassist_queue_oldest_job_age_seconds",
                                   "Seconds the oldest job of the queue has waited (0: empty)",
                                   labels=["queue"])
        workers = GaugeMetricFamily("mlassist_workers", "Live RQ workers listening on the queue",
                                    labels=["queue"])
        for name in ALL_QUEUES:
            queue = Queue(name, connection=self.redis)
            jobs.add_metric([name, "queued"], cast(int, self.redis.llen(queue.key)))
            for state, registry_key in _registries(queue).items():
                jobs.add_metric([name, state], cast(int, self.redis.zcard(registry_key)))
            oldest.add_metric([name], self._oldest_age(queue))
            workers.add_metric([name], Worker.count(connection=self.redis, queue=queue))
        return [jobs, oldest, workers]

    def _oldest_age(self, queue: Queue) -> float:
        first = cast(bytes | None, self.redis.lindex(queue.key, 0))  # RQ pushes right, pops left
        if first is None:
            return 0.0
        raw = cast(bytes | None, self.redis.hget(Job.key_for(first.decode()), "enqueued_at"))
        if not raw:
            return 0.0
        enqueued = datetime.fromisoformat(raw.decode().replace("Z", "+00:00")).timestamp()
        return max(0.0, self.now() - enqueued)

    def _projects(self) -> list[Metric]:
        rounds = CounterMetricFamily("mlassist_trainings", "Training rounds by outcome",
                                     labels=["project", "outcome"])
        seconds = SummaryMetricFamily("mlassist_training_seconds",
                                      "Duration of the training rounds that finished",
                                      labels=["project"])
        last = _per_project("mlassist_training_last_seconds",
                            "Duration of the project's last finished round")
        finished = _per_project("mlassist_training_last_finished_timestamp_seconds",
                                "When the project's last round finished")
        labeled = _per_project("mlassist_project_labeled_tasks",
                               "Labeled tasks at the project's last round")
        champion = _per_project("mlassist_project_has_champion",
                                "1 when the project has a champion model (as of its last round)")
        done = _per_project("mlassist_pushback_done_tasks",
                            "Tasks of the project when its last complete push-back ended")
        for project in self.jobs.projects():
            label = str(project)
            stats = self.jobs.training_stats(project)
            for outcome in TRAINING_OUTCOMES:
                rounds.add_metric([label, outcome], stats.get(outcome, 0.0))
            if "seconds_count" in stats:
                seconds.add_metric([label], int(stats["seconds_count"]), stats["seconds_sum"])
                last.add_metric([label], stats["last_seconds"])
                finished.add_metric([label], stats["last_finished"])
            if "labeled" in stats:
                labeled.add_metric([label], stats["labeled"])
                champion.add_metric([label], stats.get("has_champion", 0.0))
            pushed = self.jobs.pushback_done(project)
            if pushed is not None:
                done.add_metric([label], float(pushed["tasks"]))
        return [rounds, seconds, last, finished, labeled, champion, done]

    def _running(self) -> list[Metric]:
        """The progress the running jobs save in their meta (tasks.py's `_progress`)."""
        step = _per_project("mlassist_training_progress_ratio",
                            "Share of its optimizer steps a running training has done")
        seen = _per_project("mlassist_pushback_tasks_seen", "Tasks a running push-back has walked")
        imported = _per_project("mlassist_pushback_imported",
                                "Predictions a running push-back has imported")
        for job in self._started(TRAINING_QUEUE):
            if job.meta.get("steps"):
                step.add_metric([str(job.args[0])], job.meta.get("step", 0) / job.meta["steps"])
        for job in self._started(PREDICT_QUEUE):
            if "tasks_seen" in job.meta:
                seen.add_metric([str(job.args[0])], job.meta["tasks_seen"])
                imported.add_metric([str(job.args[0])], job.meta.get("imported", 0))
        return [step, seen, imported]

    def _started(self, name: str) -> list[Job]:
        """The running jobs of a queue that name a project (their first argument)."""
        registry = StartedJobRegistry(queue=Queue(name, connection=self.redis))
        jobs = Job.fetch_many(registry.get_job_ids(cleanup=False), connection=self.redis)
        return [job for job in jobs if job is not None and job.args]


def exporter_registry(redis: Redis) -> CollectorRegistry:
    """A registry holding only the jobs collector (nothing global)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(redis))
    return registry


def run_exporter(settings: Settings, port: int) -> None:
    """Serve /metrics on HOST:`port` until SIGTERM or SIGINT."""
    server, thread = start_http_server(port, settings.host,
                                       registry=exporter_registry(connect(settings.redis_url)))
    logger.info("metrics on http://%s:%d/metrics", settings.host, port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    thread.join(5)
