"""`mlassist healthcheck worker|sync`, the container health checks, against a real Redis and
a real worker process."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from backend.demo.localstack import Process, free_port
from tests.redis_server import RedisServer
from tests.services import mlassist_bin


def healthcheck(what: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    settings = {"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "unused"}
    return subprocess.run([mlassist_bin(), "healthcheck", what],
                          env={**os.environ, **settings, **env},
                          capture_output=True, text=True, timeout=60)


def test_worker_health_follows_this_hosts_worker(tmp_path: Path,
                                                 redis_server: RedisServer) -> None:
    from redis import Redis

    Redis.from_url(redis_server.url).flushall()
    env = {"REDIS_URL": redis_server.url, "MODEL_DIR": str(tmp_path / "models")}
    done = healthcheck("worker", env)
    assert done.returncode == 1 and "no worker on" in done.stdout
    worker = Process([mlassist_bin(), "worker", "--queues", "housekeeping"],
                     {**os.environ, **env, "RECONCILE_INTERVAL": "3600",
                      "LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "x"},
                     tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 60
        while (done := healthcheck("worker", env)).returncode != 0:
            assert time.monotonic() < deadline and worker.running(), \
                done.stdout + worker.log.read_text()[-2000:]
            time.sleep(1)
        assert "heartbeat" in done.stdout
    finally:
        worker.stop()
    deadline = time.monotonic() + 30
    while healthcheck("worker", env).returncode == 0:  # a stopped worker deregisters
        assert time.monotonic() < deadline, "a stopped worker still counted as healthy"
        time.sleep(1)


def test_worker_health_without_redis_says_so() -> None:
    done = healthcheck("worker", {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert done.returncode == 1
    assert "Redis is unreachable" in done.stdout and "Traceback" not in done.stderr


def test_sync_health_follows_its_heartbeat_file(tmp_path: Path) -> None:
    beat = tmp_path / "sync.heartbeat"
    assert healthcheck("sync", {}).returncode == 1
    env = {"SYNC_HEARTBEAT_FILE": str(beat), "SYNC_INTERVAL": "60"}
    done = healthcheck("sync", env)
    assert done.returncode == 1 and "has not started" in done.stdout
    beat.touch()
    assert healthcheck("sync", env).returncode == 0
    stale = time.time() - 301  # three intervals, but at least 5 minutes
    os.utime(beat, (stale, stale))
    done = healthcheck("sync", env)
    assert done.returncode == 1 and "limit 300 s" in done.stdout
