"""`mlassist metrics`, the exporter the ServiceMonitor scrapes, against a real Redis: jobs in
each state put there the way RQ and the job functions do, read back as metrics; and the
dashboard and the alerts use only metrics it exports."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from datetime import timedelta
from pathlib import Path

import requests
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from rq import Queue
from rq.executions import Execution
from rq.job import Job
from rq.registry import FailedJobRegistry

from backend.demo.localstack import Process, free_port, wait_http
from backend.jobs.exporter import JobsCollector, exporter_registry
from backend.jobs.queues import PREDICT_QUEUE, TRAINING_QUEUE, JobQueue
from tests.conftest import BASE_ENV
from tests.redis_server import RedisServer
from tests.services import mlassist_bin

MONITORING = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes" / "monitoring"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def collect(redis: Redis, ahead_s: float = 0.0) -> Samples:
    """One scrape of the collector, its clock `ahead_s` seconds in the future."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(redis, now=lambda: time.time() + ahead_s))
    return scrape(generate_latest(registry).decode())


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _running(redis: Redis, queue: str, args: tuple, meta: dict) -> Job:
    """A job in RQ's started registry with progress in its meta, as a work horse leaves it."""
    job = Queue(queue, connection=redis).enqueue("time.sleep", *args)
    Queue(queue, connection=redis).remove(job)
    job.meta.update(meta)
    job.save_meta()
    with redis.pipeline() as pipe:
        Execution.create(job, ttl=600, pipeline=pipe)
        pipe.execute()
    return job


def populate(redis: Redis) -> None:
    """Two queued trainings, one running at step 50 of 200, a push-back 300 tasks in, a failed
    and a scheduled job, and project 7's bookkeeping after a promoted and a handed-back round."""
    training = Queue(TRAINING_QUEUE, connection=redis)
    training.enqueue("time.sleep", 8)
    training.enqueue("time.sleep", 9)
    _running(redis, TRAINING_QUEUE, (7,), {"stage": "training", "step": 50, "steps": 200})
    _running(redis, PREDICT_QUEUE, (7,), {"stage": "push-back", "tasks_seen": 300,
                                          "imported": 280})
    failed = Queue(PREDICT_QUEUE, connection=redis).enqueue("time.sleep", 1)
    Queue(PREDICT_QUEUE, connection=redis).remove(failed)
    FailedJobRegistry(queue=Queue(PREDICT_QUEUE, connection=redis)).add(failed, ttl=600,
                                                                         exc_string="boom")
    training.enqueue_in(timedelta(seconds=30), "time.sleep", 1)
    jobs = JobQueue(redis)
    jobs.remember_project(7)
    jobs.record_training(7, "promoted", seconds=12.5, labeled=40, has_champion=True)
    jobs.record_training(7, "handed_back")
    jobs.set_pushback_done(7, "v1", 500)


def test_queue_depth_running_failed_and_the_oldest_job(redis_db: Redis) -> None:
    populate(redis_db)
    samples = collect(redis_db, ahead_s=100)
    assert value(samples, "mlassist_redis_up") == 1
    depth = {(queue, state): value(samples, "mlassist_queue_jobs", queue=queue, state=state)
             for queue in (TRAINING_QUEUE, PREDICT_QUEUE)
             for state in ("queued", "running", "scheduled", "failed")}
    assert depth == {(TRAINING_QUEUE, "queued"): 2, (TRAINING_QUEUE, "running"): 1,
                     (TRAINING_QUEUE, "scheduled"): 1, (TRAINING_QUEUE, "failed"): 0,
                     (PREDICT_QUEUE, "queued"): 0, (PREDICT_QUEUE, "running"): 1,
                     (PREDICT_QUEUE, "scheduled"): 0, (PREDICT_QUEUE, "failed"): 1}
    oldest = value(samples, "mlassist_queue_oldest_job_age_seconds", queue=TRAINING_QUEUE)
    assert oldest is not None and 100 <= oldest < 130
    assert value(samples, "mlassist_queue_oldest_job_age_seconds", queue=PREDICT_QUEUE) == 0
    assert value(samples, "mlassist_workers", queue=TRAINING_QUEUE) == 0
    # What KEDA reads is what the exporter counts: the list and the started registry.
    assert redis_db.llen("rq:queue:training") == 2 and redis_db.zcard("rq:wip:training") == 1


def test_training_and_push_back_progress(redis_db: Redis) -> None:
    populate(redis_db)
    samples = collect(redis_db)
    rounds = {outcome: value(samples, "mlassist_trainings_total", project="7", outcome=outcome)
              for outcome in ("promoted", "rejected", "handed_back")}
    assert rounds == {"promoted": 1, "rejected": 0, "handed_back": 1}
    assert value(samples, "mlassist_training_seconds_sum", project="7") == 12.5
    assert value(samples, "mlassist_training_seconds_count", project="7") == 1
    assert value(samples, "mlassist_training_last_seconds", project="7") == 12.5
    assert value(samples, "mlassist_training_progress_ratio", project="7") == 0.25
    assert value(samples, "mlassist_pushback_tasks_seen", project="7") == 300
    assert value(samples, "mlassist_pushback_imported", project="7") == 280
    assert value(samples, "mlassist_pushback_done_tasks", project="7") == 500
    assert value(samples, "mlassist_project_labeled_tasks", project="7") == 40
    assert value(samples, "mlassist_project_has_champion", project="7") == 1


def test_a_scrape_runs_no_rq_cleanup(redis_db: Redis) -> None:
    """An expired entry of the started registry stays for the workers' maintenance."""
    populate(redis_db)
    redis_db.zadd("rq:wip:training", {"gone:exec": 1})  # expired long ago
    collect(redis_db)
    assert redis_db.zscore("rq:wip:training", "gone:exec") == 1


def test_redis_down_reads_as_redis_up_zero() -> None:
    down = Redis(port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    samples = scrape(generate_latest(exporter_registry(down)).decode())
    assert value(samples, "mlassist_redis_up") == 0
    assert {name for name, _ in samples} == {"mlassist_redis_up"}


def _names(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in re.findall(r"\bmlassist_[a-z_]+", expr)}


def test_the_dashboard_and_the_alerts_use_only_exported_metrics(redis_db: Redis) -> None:
    populate(redis_db)
    exported = {name for name, _ in collect(redis_db)}
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    panels = _names([t["expr"] for panel in dashboard["panels"] for t in panel["targets"]])
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["spec"]["groups"]
    alerts = _names([rule["expr"] for group in rules for rule in group["rules"]])
    assert panels and alerts
    assert panels - exported == set() and alerts - exported == set()
    shown = {name.removesuffix("_sum").removesuffix("_count") for name in panels}
    assert {"mlassist_queue_jobs", "mlassist_training_seconds", "mlassist_pushback_imported",
            "mlassist_project_has_champion"} <= shown


def test_mlassist_metrics_serves_them_over_http_until_sigterm(
        tmp_path: Path, redis_db: Redis, redis_server: RedisServer) -> None:
    populate(redis_db)
    port = free_port()
    server = Process([mlassist_bin(), "metrics", "--port", str(port)],
                     {**os.environ, **BASE_ENV, "REDIS_URL": redis_server.url,
                      "HOST": "127.0.0.1"}, tmp_path / "metrics.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", 60, server)
        samples = scrape(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        assert value(samples, "mlassist_queue_jobs", queue=TRAINING_QUEUE, state="queued") == 2
        os.kill(server.process.pid, signal.SIGTERM)
        assert server.process.wait(30) == 0
    finally:
        server.stop()
