"""The loop end to end: real Label Studio, Redis, `mlassist serve` and `mlassist worker`.

Labels created through the Label Studio API one at a time cross the training threshold; Label
Studio's own webhooks reach the backend, the worker trains exactly once, promotes, and fills
every unlabeled task with predictions of that version; the project shows that version.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from label_studio_sdk import LabelStudio

from backend.demo.localstack import Process, free_port, upload_images
from backend.demo.scenes import SHAPES, make_scene
from backend.labelstudio.boxes import from_region_value
from backend.model.evaluation import ImagePrediction, ImageTruth, match_detections
from backend.model.registry import AzureBlobStore, LocalStore, Registry
from tests.labels import CONFIG, regions_of
from tests.labelstudio import ADMIN_TOKEN, LabelStudioServer
from tests.redis_server import RedisServer
from tests.review_e2e import check_review
from tests.services import Backend, mlassist_bin

pytestmark = pytest.mark.e2e

SECRET = "loop-webhook-secret"
AUTH = ("mlassist", "loop-basic-pass")
LABELED, TOTAL = 12, 20
# The full loop: enough labels and steps for a model worth showing, in CI time (2 CPU cores).
FULL_LABELED, FULL_TOTAL, FULL_STEPS = 40, 60, 500
# Pre-annotations against the ground truth (IoU >= 0.5, same class), thresholds calibrated
# for TARGET_PRECISION 0.85 on 12 held-out images. Seen at 400 steps: recall 0.77-0.98,
# precision 0.79-0.95 (the low ones in CI, with other tests' tasks shifting the split).
RECALL_FLOOR, PRECISION_FLOOR = 0.6, 0.7


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


def box_quality(predictions: list, seeds: dict[int, int]) -> dict[str, float]:
    """Pre-annotations against the scenes' ground truth: a box counts when it overlaps a
    ground-truth box of its class with IoU >= 0.5 (each ground-truth box matched once)."""
    truths, found = [], []
    for prediction in predictions:
        scene = make_scene(seeds[prediction.task])
        width, height = scene.image.size
        boxes, labels, scores = [], [], []
        for region in prediction.result:
            box = from_region_value(region["value"], width, height)
            if box is not None:
                boxes.append((box.x1, box.y1, box.x2, box.y2))
                labels.append(SHAPES.index(region["value"]["rectanglelabels"][0]))
                scores.append(float(region.get("score", 1.0)))
        truths.append(ImageTruth(np.array(scene.boxes, np.float32).reshape(-1, 4),
                                 np.array([SHAPES.index(x) for x in scene.labels]),
                                 width, height))
        found.append(ImagePrediction(np.array(boxes, np.float32).reshape(-1, 4),
                                     np.array(scores, np.float32), np.array(labels)))
    hits = predicted = truth = 0
    for index in range(len(SHAPES)):
        _, matched, n_truth = match_detections(truths, found, index)
        hits += int(matched.sum())
        predicted += len(matched)
        truth += n_truth
    return {"recall": hits / max(truth, 1), "precision": hits / max(predicted, 1),
            "truth_boxes": truth, "predicted_boxes": predicted}


def test_full_loop_sync_label_train_on_one_worker_prelabel_on_another(
        tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudio,
        redis_server: RedisServer, request: pytest.FixtureRequest) -> None:
    """Blobs in Azurite -> `mlassist sync` -> tasks; a simulated labeler submits ground truth
    one task at a time; Label Studio's webhooks -> a training worker (its own cache) trains
    once and promotes into a registry in Azurite; a second worker (another cache, other
    queues) pre-annotates the backlog; the backend (a third cache) serves the new champion.
    The pre-annotations must find the ground-truth boxes above the floors below."""
    from redis import Redis

    from tests.azurite import Azurite
    from tests.test_sync import fill

    azurite: Azurite = request.getfixturevalue("azurite")
    Redis.from_url(redis_server.url).flushall()
    seeds = {f"scenes/scene-{seed:05d}.jpg": seed for seed in range(FULL_TOTAL)}
    for name, seed in seeds.items():
        fill(azurite, "full-loop", [name], _jpeg(seed))
    port = free_port()
    env = {
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": ADMIN_TOKEN,
        "REDIS_URL": redis_server.url, "WEBHOOK_SECRET": SECRET,
        "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1],
        "PORT": str(port), "BACKEND_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "MODEL_WEIGHTS": "none", "DEVICE": "cpu", "TORCH_HOME": str(tmp_path / "torch"),
        "REGISTRY_AZURE_CONTAINER": "full-loop-models",
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "SYNC_CONTAINER": "full-loop", "SYNC_INTERVAL": "2", "ALLOWED_IMAGE_HOSTS": "127.0.0.1",
        "TRAIN_MIN_LABELED": str(FULL_LABELED), "TRAIN_EVERY": "1000", "TRAIN_GROWTH": "0",
        "TRAIN_STEPS": str(FULL_STEPS), "LOG_LEVEL": "info",
        # 11 held-out images, not 5-7: thresholds calibrated on a handful are erratic
        # (seen: recall 0.49 at precision 0.88 after 5 held out, 0.80 / 0.92 after 7).
        "VALIDATION_FRACTION": "0.3", "TARGET_PRECISION": "0.85",
    }

    def role(name: str) -> dict[str, str]:  # each process its own model and image caches
        return {**os.environ, **env, "MODEL_DIR": str(tmp_path / name / "models"),
                "IMAGE_CACHE_DIR": str(tmp_path / name / "images")}

    project = client.projects.create(title="full loop", label_config=CONFIG).id
    backend = Backend(role("backend"), tmp_path / "backend.log").wait()
    assert "connected the ML backend" in mlassist(role("admin"), "connect", "--project",
                                                  str(project))
    trainer = Process([mlassist_bin(), "worker", "--queues", "training"], role("trainer"),
                      tmp_path / "trainer.log")
    labeler = Process([mlassist_bin(), "worker", "--queues", "prelabel,housekeeping"],
                      role("prelabeler"), tmp_path / "prelabeler.log")
    beat = tmp_path / "sync.heartbeat"
    sync = Process([mlassist_bin(), "sync", "--project", str(project), "--watch"],
                   {**role("sync"), "SYNC_HEARTBEAT_FILE": str(beat)}, tmp_path / "sync.log")
    processes = [sync, labeler, trainer]
    try:
        deadline = time.monotonic() + 60
        while len(tasks := list(client.tasks.list(project=project))) < FULL_TOTAL:
            assert time.monotonic() < deadline and sync.running(), sync.log.read_text()[-2000:]
            time.sleep(1)
        assert "heartbeat" in mlassist({**role("admin"), "SYNC_HEARTBEAT_FILE": str(beat)},
                                       "healthcheck", "sync")
        seed_of_task = {t.id: seeds[t.data["mlassist_blob"].split("/", 1)[1]] for t in tasks}
        tasks.sort(key=lambda t: t.id)
        for task in tasks[:FULL_LABELED]:  # a labeler, one task at a time
            client.annotations.create(id=task.id,
                                      result=regions_of(make_scene(seed_of_task[task.id])))
            time.sleep(0.2)

        registry = Registry(AzureBlobStore(azurite.connection_string, "full-loop-models"),
                            tmp_path / "test-cache")
        unlabeled = {t.id for t in tasks[FULL_LABELED:]}
        deadline = time.monotonic() + 600
        version = None
        while time.monotonic() < deadline:
            assert trainer.running() and labeler.running(), trainer.log.read_text()[-3000:]
            latest = registry.versions(project)
            assert not latest or latest[-1]["status"] != "rejected", \
                f"the round was not promoted: {latest[-1]}"
            champion = registry.champion(project)
            if champion is not None:
                version = champion["version"]
                found = {p.task for p in client.predictions.list(project=project)
                         if p.model_version == version}
                if unlabeled <= found:
                    break
            time.sleep(3)
        else:
            pytest.fail(f"no champion predictions in time:\n{trainer.log.read_text()[-3000:]}"
                        f"\n{labeler.log.read_text()[-3000:]}")
        assert len(registry.versions(project)) == 1, "exactly one training"

        # Each role did its part, from its own cache.
        assert "training" in trainer.log.read_text() and version is not None
        pushed = f"pushed {len(unlabeled)} predictions of {version}"
        deadline = time.monotonic() + 30  # the job logs after its last import lands
        while pushed not in labeler.log.read_text():
            assert time.monotonic() < deadline, labeler.log.read_text()[-3000:]
            time.sleep(0.5)
        assert list((tmp_path / "prelabeler" / "models" / "cache").rglob("*.pt")), \
            "the pre-labeling worker fetched the champion from the shared registry"
        assert not (tmp_path / "prelabeler" / "models" / "registry").exists()

        predictions = [p for p in client.predictions.list(project=project)
                       if p.model_version == version]
        per_task: dict[int, int] = {}
        for prediction in predictions:
            per_task[prediction.task] = per_task.get(prediction.task, 0) + 1
        assert set(per_task) == unlabeled and set(per_task.values()) == {1}
        assert client.projects.get(id=project).model_version == version
        quality = box_quality(predictions, seed_of_task)
        print(f"full loop: {version}, pre-annotations on {len(unlabeled)} tasks: {quality}")
        assert quality["recall"] >= RECALL_FLOOR, quality
        assert quality["precision"] >= PRECISION_FLOOR, quality

        # The serving process picked the promoted champion up from the registry.
        deadline = time.monotonic() + 30
        while True:
            shown = requests.get(f"{backend.url}/status", params={"project": project},
                                 auth=AUTH, timeout=30).json()
            answer = requests.post(f"{backend.url}/predict", auth=AUTH, timeout=60, json={
                "project": f"{project}.0", "label_config": CONFIG,
                "tasks": [{"id": tasks[-1].id, "data": tasks[-1].data}]}).json()
            if answer["results"][0].get("model_version") == version:
                break
            assert time.monotonic() < deadline, answer
            time.sleep(1)
        assert shown["champion"]["version"] == version and shown["jobs"]["failed"] == []
        assert shown["labeled"] == FULL_LABELED and shown["tasks"] == FULL_TOTAL
        assert list((tmp_path / "backend" / "models" / "cache").rglob("*.pt"))
        assert json.loads(mlassist(role("admin"), "status", "--project", str(project))
                          )["champion"]["version"] == version

        # The review: the promotion's, then errors made on purpose found (tests/review_e2e.py).
        check_review(client, label_studio.url, project, version, registry,
                     tasks[FULL_LABELED:FULL_LABELED + 12], seed_of_task, FULL_LABELED,
                     lambda *args: mlassist(role("admin"), *args), backend.url, AUTH)

        # New blobs: the sync imports them, TASKS_CREATED reaches the backend, and the
        # champion pre-annotates them within seconds.
        fill(azurite, "full-loop", [f"new/{i}.jpg" for i in range(3)], _jpeg(90))
        os.kill(sync.process.pid, signal.SIGHUP)  # a pass now
        deadline = time.monotonic() + 90
        while True:
            synced = {t.id for t in client.tasks.list(project=project)
                      if t.data["mlassist_blob"].startswith("full-loop/new/")}
            found = {p.task for p in client.predictions.list(project=project)
                     if p.model_version == version}
            if len(synced) == 3 and synced <= found:
                break
            assert time.monotonic() < deadline, labeler.log.read_text()[-3000:]
            time.sleep(1)
    finally:
        for process in processes:
            process.stop()
        backend.stop()
    for log in (backend.log, trainer.log, labeler.log, sync.log):
        text = Path(log).read_text()
        assert ADMIN_TOKEN not in text and SECRET not in text and AUTH[1] not in text
        assert "sig=" not in text and "AccountKey" not in text, f"a secret in {log}"


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
