"""The loop end to end: real Label Studio, Redis, `mlassist serve` and `mlassist worker`.

Labels created through the Label Studio API one at a time cross the training threshold; Label
Studio's own webhooks reach the backend, the worker trains exactly once, promotes, and fills
every unlabeled task with predictions of that version; the project shows that version.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from label_studio_sdk import LabelStudio

from backend.localstack import Process, free_port, upload_images
from backend.model.registry import LocalStore, Registry
from backend.scenes import make_scene
from tests.labels import CONFIG, regions_of
from tests.labelstudio import ADMIN_TOKEN, LabelStudioServer
from tests.redis_server import RedisServer
from tests.services import Backend, mlassist_bin

pytestmark = pytest.mark.e2e

SECRET = "loop-webhook-secret"
AUTH = ("mlassist", "loop-basic-pass")
LABELED, TOTAL = 12, 20


@pytest.fixture
def loop_env(tmp_path: Path, label_studio: LabelStudioServer,
             redis_server: RedisServer) -> dict[str, str]:
    port = free_port()
    from redis import Redis

    Redis.from_url(redis_server.url).flushall()
    return {
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": ADMIN_TOKEN,
        "REDIS_URL": redis_server.url, "MODEL_DIR": str(tmp_path / "models"),
        "IMAGE_CACHE_DIR": str(tmp_path / "images"), "WEBHOOK_SECRET": SECRET,
        "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1],
        "PORT": str(port), "BACKEND_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "MODEL_WEIGHTS": "none", "DEVICE": "cpu", "TORCH_HOME": str(tmp_path / "torch"),
        "TRAIN_MIN_LABELED": str(LABELED), "TRAIN_EVERY": "1000", "TRAIN_GROWTH": "0",
        "TRAIN_STEPS": "20", "TRAIN_BATCH_SIZE": "2", "VALIDATION_FRACTION": "0.3",
        "MIN_VALIDATION_IMAGES": "2", "MIN_FIRST_AP50": "0", "SCORE_THRESHOLD": "0.05",
        "PRELABEL_UNCALIBRATED": "show", "LOG_LEVEL": "info",
        "ALLOWED_IMAGE_HOSTS": "127.0.0.1",  # Azurite, for synced blobs
    }


@pytest.fixture
def running(tmp_path: Path, loop_env: dict[str, str]) -> Iterator[tuple[Backend, Process]]:
    backend = Backend(loop_env, tmp_path / "backend.log").wait()
    worker = Process([mlassist_bin(), "worker"], {**os.environ, **loop_env},
                     tmp_path / "worker.log")
    yield backend, worker
    worker.stop()
    backend.stop()


def mlassist(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([mlassist_bin(), *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def start_project(client: LabelStudio, label_studio: LabelStudioServer, env: dict[str, str],
                  total: int, labeled: int, title: str) -> tuple[int, list]:
    project = client.projects.create(title=title, label_config=CONFIG).id
    assert "connected the ML backend" in mlassist(env, "connect", "--project", str(project))
    files = []
    for seed in range(total):
        buffer = io.BytesIO()
        make_scene(seed).image.save(buffer, format="JPEG", quality=92)
        files.append((f"scene-{seed:05d}.jpg", buffer.getvalue(), "image/jpeg"))
    upload_images(label_studio.url, {"Authorization": f"Token {ADMIN_TOKEN}"}, project, files)
    tasks = sorted(client.tasks.list(project=project), key=lambda t: t.id)
    for task in tasks[:labeled]:
        seed = int(Path(task.data["image"]).stem.split("-")[-1])
        client.annotations.create(id=task.id, result=regions_of(make_scene(seed)))
    return project, tasks


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    make_scene(seed).image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def test_labels_past_the_threshold_train_once_and_prelabel_the_backlog(
        tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudio,
        loop_env: dict[str, str], running: tuple[Backend, Process],
        request: pytest.FixtureRequest) -> None:
    backend, worker = running
    project, tasks = start_project(client, label_studio, loop_env, TOTAL, LABELED, "the loop")
    assert mlassist(loop_env, "connect", "--project", str(project)) == "", "idempotent"
    hooks = [h for h in client.webhooks.list(project=project)
             if h.url == f"{backend.url}/webhook"]
    assert hooks and all(h.headers == {"X-MLAssist-Secret": SECRET} for h in hooks)
    assert len(tasks) == TOTAL

    registry = Registry(LocalStore(Path(loop_env["MODEL_DIR"]) / "registry"), tmp_path / "c")
    unlabeled = {t.id for t in tasks[LABELED:]}
    deadline = time.monotonic() + 240
    version = None
    while time.monotonic() < deadline:
        assert worker.running(), worker.log.read_text()[-3000:]
        champion = registry.champion(project)
        if champion is not None:
            version = champion["version"]
            found = {p.task for p in client.predictions.list(project=project)
                     if p.model_version == version}
            if unlabeled <= found:
                break
        time.sleep(2)
    else:
        pytest.fail(f"no champion predictions in time:\n{worker.log.read_text()[-4000:]}")

    assert len(registry.versions(project)) == 1, "exactly one training"
    predictions = [p for p in client.predictions.list(project=project)
                   if p.model_version == version]
    per_task: dict[int, int] = {}
    for prediction in predictions:
        per_task[prediction.task] = per_task.get(prediction.task, 0) + 1
    assert set(per_task) == unlabeled and set(per_task.values()) == {1}
    assert client.projects.get(id=project).model_version == version

    status = requests.get(f"{backend.url}/status", params={"project": project}, auth=AUTH,
                          timeout=30).json()
    assert status["labeled"] == LABELED and status["tasks"] == TOTAL
    assert status["champion"]["version"] == version
    assert status["tasks_with_champion_prelabels"] == len(unlabeled)
    assert status["jobs"]["failed"] == []
    shown = json.loads(mlassist(loop_env, "status", "--project", str(project)))
    assert shown["champion"]["version"] == version

    # New images dropped into blob storage: the sync imports them, Label Studio's
    # TASKS_CREATED reaches the backend, and the champion pre-annotates them within seconds.
    from tests.azurite import Azurite
    from tests.test_sync import fill

    azurite: Azurite = request.getfixturevalue("azurite")
    fill(azurite, "loop-new", [f"new/{i}.jpg" for i in range(3)], _jpeg(90))
    sync_env = {**loop_env, "SYNC_CONTAINER": "loop-new",
                "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    mlassist(sync_env, "sync", "--project", str(project))
    synced = {t.id for t in client.tasks.list(project=project) if "mlassist_blob" in t.data}
    assert len(synced) == 3
    deadline = time.monotonic() + 90
    while True:
        found = {p.task for p in client.predictions.list(project=project)
                 if p.model_version == version}
        if synced <= found:
            break
        assert time.monotonic() < deadline, worker.log.read_text()[-3000:]
        time.sleep(1)

    for log in (backend.log, worker.log):
        text = Path(log).read_text()
        assert ADMIN_TOKEN not in text and SECRET not in text and AUTH[1] not in text
        assert "sig=" not in text, "no SAS signature in the logs"


def test_worker_killed_mid_training_leaves_no_stuck_lock(
        tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudio,
        loop_env: dict[str, str], redis_server: RedisServer) -> None:
    import signal

    from redis import Redis

    env = {**loop_env, "TRAIN_STEPS": "5000", "JOB_LOCK_TTL": "6"}
    backend = Backend(env, tmp_path / "backend.log").wait()
    worker = Process([mlassist_bin(), "worker"], {**os.environ, **env}, tmp_path / "w1.log")
    redis = Redis.from_url(redis_server.url)
    try:
        project, _ = start_project(client, label_studio, env, 14, LABELED, "killed worker")
        lock = f"mlassist:lock:train:{project}"
        deadline = time.monotonic() + 120
        while not redis.exists(lock):
            assert time.monotonic() < deadline, (tmp_path / "w1.log").read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(3)  # well inside the 5000-step round
        # SIGKILL the worker and its work horse (RQ puts the horse in its own session).
        pid = worker.process.pid
        horses = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        assert horses, "the training runs in a work horse"
        for victim in [pid, *map(int, horses)]:
            os.kill(victim, signal.SIGKILL)
        worker.process.wait()
        deadline = time.monotonic() + 20
        while redis.exists(lock):
            assert time.monotonic() < deadline, "the lock outlived its 6 s expiry"
            time.sleep(0.5)
        assert redis.ttl(lock) == -2
        registry = Registry(LocalStore(Path(env["MODEL_DIR"]) / "registry"), tmp_path / "c")
        assert registry.versions(project) == [], "the killed round recorded nothing"

        # A new worker, and the periodic reconciliation (here by hand), run it again.
        fast = {**env, "TRAIN_STEPS": "20"}
        worker = Process([mlassist_bin(), "worker"], {**os.environ, **fast},
                         tmp_path / "w2.log")
        mlassist(fast, "reconcile", "--project", str(project))
        deadline = time.monotonic() + 120
        while registry.champion(project) is None:
            assert time.monotonic() < deadline, (tmp_path / "w2.log").read_text()[-3000:]
            time.sleep(1)
        assert len(registry.versions(project)) == 1
    finally:
        worker.stop()
        backend.stop()
