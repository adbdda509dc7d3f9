"""Safe scale-in (issue 18), with real processes: Kubernetes stops a worker pod with SIGTERM to
its first process, then SIGKILL after terminationGracePeriodSeconds.

- A real `mlassist worker` is SIGTERMed in the middle of a real training (Label Studio, Redis,
  a 100,000-step round): it exits within seconds, the training is queued again, the project's
  lock is free and nothing was recorded; a second worker runs the queued training, after the
  first stopped, and exactly one version is promoted.
- A job that does not hand back (here `time.sleep`) is killed at WORKER_STOP_TIMEOUT, before
  any kubelet would, and RQ schedules its retry.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from label_studio_sdk import LabelStudio
from redis import Redis
from rq import Queue, Retry
from rq.job import Job

from backend.demo.localstack import Process, descendants
from backend.jobs.queues import PREDICT_QUEUE, TRAINING_QUEUE, JobQueue, key
from backend.model.registry import LocalStore, Registry
from tests.conftest import BASE_ENV
from tests.faults import base_env, dead, ls_api, new_project, wait_for
from tests.labelstudio import LabelStudioServer
from tests.redis_server import RedisServer
from tests.services import mlassist_bin

HANDED_BACK_WITHIN_S = 30  # one optimizer step and a Redis write: far under any grace period


def _sigterm(worker: Process) -> float:
    """SIGTERM the worker's own process, as the kubelet does; seconds until it exited."""
    started = time.monotonic()
    os.kill(worker.process.pid, signal.SIGTERM)
    worker.process.wait(120)
    return time.monotonic() - started


@pytest.mark.e2e
def test_sigterm_mid_training_hands_the_round_to_another_worker(
        tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudio,
        redis_db: Redis, redis_server: RedisServer) -> None:
    tasks = new_project(client, ls_api(label_studio), "scale-in hand-back", range(12),
                         labeled=12)
    project = int(tasks[0]["project"])
    env = {**os.environ, **base_env(tmp_path, label_studio, redis_server.url),
           "TRAIN_MIN_LABELED": "10", "TORCH_THREADS": "1", "WORKER_STOP_TIMEOUT": "120"}
    jobs = JobQueue(redis_db)
    jobs.remember_project(project)
    first_id = jobs.request_training(project)
    assert first_id is not None
    registry = Registry(LocalStore(Path(env["MODEL_DIR"]) / "registry"), tmp_path / "cache")
    logs = (tmp_path / "worker-1.log", tmp_path / "worker-2.log")
    first = Process([mlassist_bin(), "worker", "--queues", TRAINING_QUEUE],
                    {**env, "TRAIN_STEPS": "100000"}, logs[0])
    second: Process | None = None
    try:
        job = Job.fetch(first_id, connection=redis_db)
        wait_for("the first worker 25 steps into its round",
                  lambda: job.get_meta(refresh=True).get("step", 0) >= 25, 300, *logs)
        horses = descendants(first.process.pid)

        took = _sigterm(first)
        assert first.process.returncode == 0, logs[0].read_text()[-3000:]
        assert took < HANDED_BACK_WITHIN_S, f"stopped after {took:.0f} s"
        assert all(dead(pid) for pid in horses), "the work horse outlived its worker"
        job.refresh()
        assert job.get_status() == "finished"
        handed = job.return_value()
        assert handed["status"] == "handed back", handed
        again = handed["requeued_as"]
        assert again and redis_db.lpos(Queue(TRAINING_QUEUE, connection=redis_db).key, again) \
            is not None, "the training is queued again"
        assert not redis_db.exists(key("lock", f"train:{project}")), "the lock is free"
        assert registry.versions(project) == [], "the interrupted round recorded nothing"

        second = Process([mlassist_bin(), "worker", "--queues", TRAINING_QUEUE],
                         {**env, "TRAIN_STEPS": "10"}, logs[1])
        retried = Job.fetch(again, connection=redis_db)
        wait_for("the second worker's round", lambda: retried.get_status(refresh=True)
                  in ("finished", "failed"), 300, *logs)
        retried.refresh()
        outcome = retried.return_value()
        assert outcome is not None and outcome["status"] == "trained", outcome
        assert outcome["promoted"] is True
        assert retried.started_at is not None and job.ended_at is not None
        assert retried.started_at >= job.ended_at, "the two rounds overlapped"
        versions = registry.versions(project)
        assert [v["status"] for v in versions] == ["champion"], versions
        assert registry.champion(project)["version"] == outcome["version"]
        stats = jobs.training_stats(project)
        assert (stats["handed_back"], stats["promoted"]) == (1, 1)
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_job_that_does_not_hand_back_is_killed_at_the_stop_timeout_and_retried(
        tmp_path: Path, redis_db: Redis, redis_server: RedisServer) -> None:
    job = Queue(PREDICT_QUEUE, connection=redis_db).enqueue(
        "time.sleep", 600, job_timeout=900, retry=Retry(max=1, interval=60))
    env = {**os.environ, **BASE_ENV, "REDIS_URL": redis_server.url,
           "MODEL_DIR": str(tmp_path / "models"), "WORKER_STOP_TIMEOUT": "3"}
    log = tmp_path / "worker.log"
    worker = Process([mlassist_bin(), "worker", "--queues", PREDICT_QUEUE], env, log)
    try:
        wait_for("the job to start", lambda: job.get_status(refresh=True) == "started", 120,
                  log)
        horses = descendants(worker.process.pid)
        took = _sigterm(worker)
        assert worker.process.returncode == 0, log.read_text()[-3000:]
        assert 3 <= took < 3 + HANDED_BACK_WITHIN_S, f"stopped after {took:.0f} s"
        assert all(dead(pid) for pid in horses)
        job.refresh()
        assert job.get_status() == "scheduled", "RQ's retry runs it on another worker"
        assert job.retries_left == 0
        assert "did not finish within 3 s of SIGTERM" in log.read_text()
    finally:
        worker.stop()
