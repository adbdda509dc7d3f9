"""Faults in the job machinery, with real processes killed for real (issue 9).

- Redis is SIGKILLed in the middle of a webhook burst and restarted on its append-only file
  (as docker/compose.yaml runs it): the webhook never answers 5xx, the server stays up, and the
  worker trains on every submitted label once Redis is back, with nobody reconciling by hand
  or restarting anything. (A pending job a dying worker had already taken must not swallow
  later requests: shown deterministically by the test after it.)
- A worker (and its RQ work horse) is SIGKILLed early in a push-back: a new worker
  finishes the backlog from the saved cursor; every unlabeled task ends with exactly one
  prediction of the champion.
- Writers of the model registry are SIGKILLed inside every write window (and at random
  moments), including a real training parked inside its commit: the registry only ever lists
  complete versions, and a later training succeeds.

A worker killed in the middle of *training* is covered by
tests/test_e2e_loop.py::test_worker_killed_mid_training_leaves_no_stuck_lock.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from label_studio_sdk import LabelStudio
from redis import Redis
from redis.exceptions import RedisError

from backend.connect import SECRET_HEADER
from backend.labelstudio import LabelStudioAPI, LabelStudioAuth
from backend.localstack import Process, descendants, free_port, wait_port
from backend.model.checkpoint import load_checkpoint
from backend.model.registry import LocalStore, Registry
from backend.scenes import make_scene
from tests import reliability
from tests.conftest import require
from tests.labels import CONFIG, regions_of
from tests.labelstudio import ADMIN_TOKEN, LabelStudioServer
from tests.redis_server import RedisServer, redis_binary
from tests.services import REPO, Backend, mlassist_bin, untrained_checkpoint

pytestmark = pytest.mark.e2e

SECRET = "faults-webhook-secret"
ARCH = "ssdlite320_mobilenet_v3_large"
CLASS_NAMES = ["__background__", "circle", "square", "triangle"]


# -- helpers ---------------------------------------------------------------------------------

def _jpeg_uri(seed: int) -> str:
    buffer = io.BytesIO()
    make_scene(seed).image.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _ls_api(label_studio: LabelStudioServer) -> LabelStudioAPI:
    return LabelStudioAPI(LabelStudioAuth(label_studio.url, ADMIN_TOKEN))


def _new_project(client: LabelStudio, api: LabelStudioAPI, title: str, seeds: range,
                 labeled: int = 0) -> list[dict]:
    """A project whose tasks are scenes (inline images); the first `labeled` get ground truth
    through the API, one annotation each, as a labeler would. Returns the tasks by id."""
    project = client.projects.create(title=title, label_config=CONFIG).id
    api.import_tasks(project, [{"data": {"image": _jpeg_uri(seed), "seed": seed}}
                               for seed in seeds])
    tasks = sorted(api.task_page(project, 0, len(seeds) + 10), key=lambda t: t["id"])
    assert len(tasks) == len(seeds)
    for task in tasks[:labeled]:
        client.annotations.create(id=task["id"],
                                  result=regions_of(make_scene(int(task["data"]["seed"]))))
    for task in tasks:
        task["project"] = project
    return tasks


def _base_env(tmp_path: Path, label_studio: LabelStudioServer, redis_url: str) -> dict[str, str]:
    return {
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": ADMIN_TOKEN,
        "REDIS_URL": redis_url, "MODEL_DIR": str(tmp_path / "models"),
        "IMAGE_CACHE_DIR": str(tmp_path / "images"), "TORCH_HOME": str(tmp_path / "torch"),
        "MODEL_WEIGHTS": "none", "DEVICE": "cpu", "LOG_LEVEL": "info",
        "TRAIN_EVERY": "1000", "TRAIN_GROWTH": "0", "TRAIN_STEPS": "5",
        "TRAIN_BATCH_SIZE": "2", "VALIDATION_FRACTION": "0.3", "MIN_VALIDATION_IMAGES": "2",
        "MIN_FIRST_AP50": "0", "SCORE_THRESHOLD": "0.05", "PRELABEL_UNCALIBRATED": "show",
    }


def _tail(*logs: Path) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                     for log in logs if log.exists())


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet (it runs nothing any more)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


def _sigkill_tree(process: Process) -> set[int]:
    """SIGKILL a process, its group and every descendant (an RQ work horse runs in a session
    of its own); return the descendants that were killed with it."""
    family = descendants(process.process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.process.pid, signal.SIGKILL)
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.process.wait(30)
    deadline = time.monotonic() + 30
    while not all(_dead(pid) for pid in family):
        assert time.monotonic() < deadline, f"survivors of SIGKILL: {family}"
        time.sleep(0.05)
    process.stop()  # closes its log
    return family


def _wait_for(what: str, check, timeout: float, *logs: Path, every: float = 0.2):
    """Poll `check` until it returns something truthy, or fail saying `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s\n{_tail(*logs)}")
        time.sleep(every)


class DurableRedis:
    """redis-server with an append-only file on its own port and directory, so it can be
    SIGKILLed and started again on the same data (docker/compose.yaml runs `--appendonly yes`;
    writes reach the kernel before a client sees the reply, so a killed process loses none)."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        workdir.mkdir(parents=True, exist_ok=True)
        self.starts = 0
        self._process = self._start()

    def _start(self) -> Process:
        self.starts += 1
        process = Process([self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                           "--appendonly", "yes", "--save", "", "--dir", str(self.workdir)],
                          os.environ, self.workdir / f"redis-{self.starts}.log")
        wait_port(self.port, 20, process)
        client = Redis.from_url(self.url, socket_timeout=2)
        deadline = time.monotonic() + 20
        while True:  # a restart answers LOADING until the append-only file is read back
            try:
                client.ping()
                return process
            except RedisError:
                assert time.monotonic() < deadline, "Redis did not load its data"
                time.sleep(0.05)

    def kill(self) -> None:
        from tests.labelstudio import kill_now

        kill_now(self._process, self.port)

    def restart(self) -> None:
        self._process.stop()
        self._process = self._start()

    def stop(self) -> None:
        self._process.stop()


# -- 1. Redis restarted during a webhook burst -------------------------------------------

LABELS = 16          # labels submitted in the burst; the first training needs all of them
KILL_AT = 10         # labels from this one on are submitted while Redis is down
SENDERS = 4          # labelers submitting at the same time, each followed by its webhook


class WebhookBurst:
    """Labelers submit annotations to Label Studio, each followed by its ANNOTATION_CREATED
    webhook to the backend (what Label Studio sends: once, 1 s timeout, no retry). Labels from
    index `kill_at` on wait until `outage` is set, so they all land while Redis is down."""

    def __init__(self, ls_url: str, backend_url: str, project: int, tasks: list[dict],
                 kill_at: int) -> None:
        self.ls_url, self.backend_url, self.project = ls_url, backend_url, project
        self.kill_at = kill_at
        self.todo: queue.Queue[tuple[int, dict]] = queue.Queue()
        for index, task in enumerate(tasks):
            self.todo.put((index, task))
        self.outage = threading.Event()
        self.answered = threading.Condition()
        self.answers: list[dict] = []
        self.annotations: list[int] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._labeler, daemon=True, name=f"labeler-{i}")
                        for i in range(SENDERS)]

    def start(self) -> WebhookBurst:
        for thread in self.threads:
            thread.start()
        return self

    def wait_answers(self, count: int, timeout: float) -> None:
        with self.answered:
            assert self.answered.wait_for(lambda: len(self.answers) + len(self.errors) >= count,
                                          timeout), f"{len(self.answers)} webhooks answered"

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            assert not thread.is_alive(), "a labeler is stuck"

    def _labeler(self) -> None:
        client = LabelStudio(base_url=self.ls_url, api_key=ADMIN_TOKEN)
        session = requests.Session()
        while True:
            try:
                index, task = self.todo.get_nowait()
            except queue.Empty:
                return
            if index >= self.kill_at:
                self.outage.wait(60)
            try:
                annotation = client.annotations.create(
                    id=task["id"], result=regions_of(make_scene(int(task["data"]["seed"]))))
                with self.answered:
                    self.annotations.append(int(annotation.id))
                redis_down = self.outage.is_set()
                started = time.monotonic()
                response = session.post(
                    f"{self.backend_url}/webhook", headers={SECRET_HEADER: SECRET}, timeout=30,
                    json={"action": "ANNOTATION_CREATED", "project": {"id": self.project},
                          "task": {"id": task["id"]},
                          "annotation": {"id": annotation.id, "task": task["id"]}})
                answer = {"index": index, "status": response.status_code,
                          "seconds": time.monotonic() - started, "redis_down": redis_down,
                          "body": response.json() if response.headers.get(
                              "content-type", "").startswith("application/json") else
                          response.text[:500]}
            except Exception as exc:  # noqa: BLE001 - reported by the test
                with self.answered:
                    self.errors.append(f"label {index}: {exc!r}")
                    self.answered.notify_all()
                continue
            with self.answered:
                self.answers.append(answer)
                self.answered.notify_all()


@pytest.mark.timeout(300)
def test_redis_killed_during_a_webhook_burst_loses_no_label(
        tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudio) -> None:
    redis = DurableRedis(require(redis_binary(), "redis-server"), tmp_path / "redis")
    env = {**_base_env(tmp_path, label_studio, redis.url), "WEBHOOK_SECRET": SECRET,
           "TRAIN_MIN_LABELED": str(LABELS), "RECONCILE_INTERVAL": "2", "JOB_LOCK_TTL": "6",
           "PORT": str(free_port()), "WEB_THREADS": "8"}
    api = _ls_api(label_studio)
    tasks = _new_project(client, api, "redis restart", range(LABELS + 2))
    project = tasks[0]["project"]
    backend = Backend(env, tmp_path / "backend.log").wait()
    worker = Process([mlassist_bin(), "worker"], {**os.environ, **env}, tmp_path / "worker.log")
    logs = (tmp_path / "worker.log", tmp_path / "backend.log")
    registry = Registry(LocalStore(tmp_path / "models" / "registry"), tmp_path / "cache")
    try:
        # The worker listens (it registers itself in Redis) before the burst starts, so the
        # outage hits it in the middle of its train-check jobs, not before its first one.
        watcher = Redis.from_url(redis.url)
        _wait_for("the worker registered", lambda: watcher.scard("rq:workers"), 60, *logs)

        burst = WebhookBurst(label_studio.url, backend.url, project, tasks[:LABELS],
                             KILL_AT).start()
        burst.wait_answers(KILL_AT - SENDERS, 60)  # the other labelers are mid-request
        redis.kill()
        burst.outage.set()
        burst.join(120)
        down_answers = [a for a in burst.answers if a["redis_down"]]
        assert len(down_answers) >= LABELS - KILL_AT
        health = requests.get(f"{backend.url}/health", timeout=5)
        assert health.status_code == 200 and health.json()["status"] == "UP"
        redis.restart()

        # Nobody calls `mlassist reconcile` or restarts the worker: it reconnects (or, if the
        # outage hit it inside a job, starts itself again), and the train check that was
        # pending in the append-only file, or the worker's reconciliation ticker
        # (RECONCILE_INTERVAL), runs the training the lost webhooks did not queue.
        versions = _wait_for("a training after Redis came back",
                             lambda: registry.versions(project), 240, *logs, every=1.0)
        assert worker.running(), _tail(*logs)
        # What the webhook answered, Redis up or down.
        server_errors = [a for a in burst.answers if a["status"] >= 500]
        assert not burst.errors and not server_errors, (burst.errors, server_errors)
        for answer in burst.answers:
            assert answer["status"] == 200, answer
            assert answer["body"]["status"] == "accepted", answer
            assert answer["body"]["project"] == project, answer
        for answer in down_answers:
            assert answer["body"]["queued"] is None, answer
            assert "reconciliation will catch up" in answer["body"]["note"], answer
        slowest = max(a["seconds"] for a in burst.answers)
        # Label Studio waits 1 s for a webhook; with Redis down it must not hang on it.
        assert max(a["seconds"] for a in down_answers) < 1.0, down_answers
        assert requests.get(f"{backend.url}/health", timeout=5).json()["status"] == "UP"
        assert "Traceback" not in (tmp_path / "backend.log").read_text()

        # Every submitted label is in the training's dataset.
        labeled = int(api.project(project).get("num_tasks_with_annotations") or 0)
        assert len(burst.annotations) == LABELS and labeled == LABELS
        record = versions[0]
        in_dataset = int(record["train_labels"]) + int(record["val_images"])
        reliability.labels_lost(LABELS - in_dataset)
        assert in_dataset == LABELS, record
        assert record["labeled_tasks"] == LABELS, record
        # One training: the outage did not make the worker train twice, or not at all.
        assert len(registry.versions(project)) == 1
        worker_log = (tmp_path / "worker.log").read_text()
        reconciled = worker_log.count("queued a reconciliation pass")
        print(f"redis restart: {len(down_answers)} of {LABELS} webhooks while Redis was down, "
              f"slowest answer {slowest:.3f} s; trained {record['version']} on {in_dataset} "
              f"labels; reconciliation passes queued: {reconciled}")
        reliability.fault_survived("redis SIGKILLed during a webhook burst, restarted on its "
                                   "append-only file")
    finally:
        worker.stop()
        backend.stop()
        redis.stop()


def test_a_job_whose_worker_died_before_starting_it_swallows_no_request(redis_db: Redis) -> None:
    """The state a Redis SIGKILL left in one run of the test above (read back from its
    append-only file): the pending train check had been taken from its queue by the worker,
    which died before starting it, so its hash still said "queued". Every webhook and every
    reconciliation collapsed into that job for the 10 minutes until RQ's maintenance. A
    request must queue a new check instead (and single flight hold again after it)."""
    from rq import Queue, Worker

    from backend.jobs.queues import TRAINING_QUEUE, JobQueue

    jobs = JobQueue(redis_db)
    first = jobs.request_training(7)
    assert first is not None and jobs.request_training(7) is None
    queue = Queue(TRAINING_QUEUE, connection=redis_db)
    taken = Queue.dequeue_any([queue], None, connection=redis_db)  # what a worker does ...
    assert taken is not None and taken[0].id == first
    Worker([queue], connection=redis_db).prepare_execution(taken[0])  # ... then it died
    assert taken[0].get_status(refresh=True) == "queued" and queue.get_job_ids() == []

    second = jobs.request_training(7)
    assert second is not None and second != first
    assert queue.get_job_ids() == [second]
    assert jobs.request_training(7) is None, "one pending check again"


# -- 2. Worker SIGKILLed during push-back ------------------------------------------------

BACKLOG = 160
LABELED_TOO = 2      # labeled tasks, which must get no prediction


@pytest.mark.timeout(240)
def test_worker_killed_during_push_back_finishes_the_backlog_once(
        tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudio,
        redis_server: RedisServer) -> None:
    redis = Redis.from_url(redis_server.url)
    redis.flushall()
    env = {**_base_env(tmp_path, label_studio, redis_server.url), "JOB_LOCK_TTL": "4",
           "RECONCILE_INTERVAL": "2", "PUSHBACK_BATCH": "8"}
    api = _ls_api(label_studio)
    tasks = _new_project(client, api, "killed push-back", range(500, 500 + LABELED_TOO + BACKLOG),
                         labeled=LABELED_TOO)
    project = tasks[0]["project"]
    labeled = {t["id"] for t in tasks[:LABELED_TOO]}
    unlabeled = {t["id"] for t in tasks[LABELED_TOO:]}
    registry = Registry(LocalStore(tmp_path / "models" / "registry"), tmp_path / "cache")
    version = registry.reserve_version(project, ARCH)
    registry.add(project, {"version": version, "arch": ARCH, "class_names": CLASS_NAMES,
                           "metrics": {"ap50": 0.5}},
                 untrained_checkpoint(tmp_path / "champion.pt", CLASS_NAMES[1:]),
                 promote=True, keep=3)

    first = Process([mlassist_bin(), "worker", "--queues", "prelabel,housekeeping"],
                    {**os.environ, **env}, tmp_path / "worker-1.log")
    second: Process | None = None
    logs = [tmp_path / "worker-1.log"]
    try:
        _wait_for("the worker registered", lambda: redis.scard("rq:workers"), 60, *logs)
        done = subprocess.run([mlassist_bin(), "reconcile", "--project", str(project)],
                              env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0 and project in json.loads(done.stdout)["pushback"], \
            done.stdout + done.stderr

        # Kill the worker and its work horse once the push-back's first pages are in.
        at_kill = _wait_for("the first predictions in Label Studio",
                            lambda: api.count_tasks_with_prediction(project, version), 120,
                            *logs, every=0.05)
        family = _sigkill_tree(first)
        assert family, "the push-back ran in a work horse"
        assert at_kill < BACKLOG, f"the push-back finished ({at_kill}) before the kill"
        lock = f"mlassist:lock:predict:{project}"
        _wait_for("the killed job's lock to expire", lambda: not redis.exists(lock), 20, *logs)
        settled = api.count_tasks_with_prediction(project, version)
        assert settled is not None and 0 < settled < BACKLOG, settled
        assert redis.get(f"mlassist:pushback-done:{project}") is None

        # A new worker; no one asks for anything: its reconciliation ticker re-queues the
        # push-back, which resumes at the saved cursor and skips what is already predicted.
        second = Process([mlassist_bin(), "worker", "--queues", "prelabel,housekeeping"],
                         {**os.environ, **env}, tmp_path / "worker-2.log")
        logs.append(tmp_path / "worker-2.log")
        finished = _wait_for(
            "the push-back finished by the new worker",
            lambda: redis.get(f"mlassist:pushback-done:{project}"), 180, *logs, every=0.5)
        assert json.loads(finished) == {"version": version, "tasks": LABELED_TOO + BACKLOG}

        per_task: dict[int, int] = {}
        for prediction in client.predictions.list(project=project):
            if prediction.model_version == version:
                per_task[prediction.task] = per_task.get(prediction.task, 0) + 1
        duplicated = sum(count - 1 for count in per_task.values() if count > 1)
        reliability.duplicates(duplicated)
        missing = unlabeled - set(per_task)
        assert duplicated == 0, {t: c for t, c in per_task.items() if c > 1}
        assert not missing, f"{len(missing)} unlabeled tasks without a prediction"
        assert not labeled & set(per_task), "a labeled task got a pre-annotation"
        assert set(per_task) == unlabeled
        # The new worker predicted only what the killed one had not imported.
        pushed = [int(n) for n in re.findall(rf"pushed (\d+) predictions of {re.escape(version)}",
                                             (tmp_path / "worker-2.log").read_text())]
        assert sum(pushed) == BACKLOG - settled, (pushed, settled)
        assert client.projects.get(id=project).model_version == version
        print(f"push-back: killed at {at_kill} of {BACKLOG} predictions (SIGKILL to "
              f"{len(family) + 1} processes), {settled} imported; the new worker pushed "
              f"{pushed}")
        reliability.fault_survived("worker and work horse SIGKILLed during push-back")
    finally:
        if second is not None:
            second.stop()
        first.stop()


# -- 3. Registry writers SIGKILLed ---------------------------------------------------------

# A registry writer (what a training's commit does, in a loop) that parks itself just before
# its Nth rename or delete: the file is written and fsynced, not yet in place (or the old
# checkpoint is no longer named, not yet deleted). N = 0: never park (killed at random).
REGISTRY_WRITER = r"""
import os, sys, time
from pathlib import Path

from backend.model.registry import LocalStore, Registry

root, checkpoint, project, park_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4])
names = ["__background__", "circle", "square", "triangle"]
events = 0


def parking(real):
    def call(*args, **kwargs):
        global events
        events += 1
        if events == park_at:
            (root / "parked").write_text(f"{real.__name__} {os.path.basename(args[-1])}")
            time.sleep(3600)
        return real(*args, **kwargs)
    return call


os.replace, os.unlink = parking(os.replace), parking(os.unlink)
registry = Registry(LocalStore(root / "registry"), root / "cache")
print("ready", flush=True)
while True:
    version = registry.reserve_version(project, "ssdlite320_mobilenet_v3_large")
    registry.add(project, {"version": version, "arch": "ssdlite320_mobilenet_v3_large",
                           "class_names": names, "metrics": {"ap50": 0.5}},
                 checkpoint, promote=True, keep=2)
    print("added", version, flush=True)
"""

# `mlassist train`, parked just before the registry.json write that records its new version
# (the second: reserve_version writes the first); its checkpoint is already in the registry.
TRAIN_PARKED_IN_COMMIT = r"""
import os, sys, time
from pathlib import Path

marker, registry_json = Path(sys.argv[1]), sys.argv[2]
real_replace = os.replace
writes = 0


def replace(src, dst, *args, **kwargs):
    global writes
    if os.fspath(dst) == registry_json:
        writes += 1
        if writes == 2:
            marker.write_text(os.fspath(src))
            time.sleep(3600)
    return real_replace(src, dst, *args, **kwargs)


os.replace = replace
from backend.cli import main

sys.exit(main(sys.argv[3:]))
"""


class RegistryChecker:
    """Checks that a registry lists only complete versions (each checkpoint loads)."""

    def __init__(self, root: Path, project: int) -> None:
        self.root, self.project = root, project
        self.registry = Registry(LocalStore(root), root.parent / "check-cache")
        self._loaded: dict[str, tuple[int, int, float]] = {}

    def _loads(self, path: Path) -> None:
        stat = path.stat()  # a missing file fails here
        key = (stat.st_ino, stat.st_size, stat.st_mtime)
        if self._loaded.get(str(path)) != key:
            checkpoint = load_checkpoint(path)
            assert checkpoint["arch"] == ARCH and checkpoint["class_names"] == CLASS_NAMES
            self._loaded[str(path)] = key

    def problems(self) -> list[str]:
        raw = (self.root / str(self.project) / "registry.json")
        if not raw.exists():
            return []
        state = json.loads(raw.read_text())  # a half-written file fails here
        found = []
        listed = {entry["version"]: entry for entry in state["versions"]}
        for version, entry in listed.items():
            if not entry.get("checkpoint"):
                continue  # pruned on purpose (KEEP_VERSIONS), the record stays
            try:
                self._loads(self.registry.checkpoint_path(self.project, version))
            except Exception as exc:  # noqa: BLE001 - collected
                found.append(f"{version}: {exc}")
        champion = state["champion"]
        if champion is not None and not (listed.get(champion) or {}).get("checkpoint"):
            found.append(f"the champion {champion} is not a kept version")
        return found


def _run_parked(argv: list[str], marker: Path, log: Path, timeout: float) -> str:
    """Start `argv`, wait until it parks (writes `marker`), SIGKILL it; what it parked at."""
    marker.unlink(missing_ok=True)
    process = Process(argv, {**os.environ}, log, cwd=REPO)
    try:
        _wait_for("the writer parked", lambda: marker.exists() or not process.running(),
                  timeout, log, every=0.02)
        assert marker.exists(), log.read_text()[-3000:]
        parked = marker.read_text()
    finally:
        _sigkill_tree(process)
    return parked


@pytest.mark.timeout(240)
def test_registry_writers_killed_leave_only_complete_versions(
        tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudio) -> None:
    api = _ls_api(label_studio)
    tasks = _new_project(client, api, "killed registry writes", range(700, 712), labeled=12)
    project = tasks[0]["project"]
    models = tmp_path / "models"
    root = models / "registry"
    checker = RegistryChecker(root, project)
    template = untrained_checkpoint(tmp_path / "template.pt", CLASS_NAMES[1:])
    writer = tmp_path / "writer.py"
    writer.write_text(REGISTRY_WRITER)

    # Parked at each rename/delete of the first versions' writes: a reserve, a checkpoint,
    # its record, and (from the third version on, KEEP 2) a pruned checkpoint's deletion.
    # Each run starts on what the previous one left behind, like a crash-looping worker.
    parked_at = []
    for park_at in range(1, 11):
        parked_at.append(_run_parked(
            [sys.executable, str(writer), str(models), str(template), str(project),
             str(park_at)], models / "parked", tmp_path / f"writer-{park_at}.log", 60))
        assert checker.problems() == [], f"after a kill at {parked_at[-1]}"
    assert any(p.startswith("replace") and p.endswith(".pt") for p in parked_at)
    assert any(p.startswith("replace") and p.endswith("registry.json") for p in parked_at)
    assert any(p.startswith("unlink") for p in parked_at), parked_at

    # And at moments nobody chose: in the middle of a checkpoint's bytes, a rename, a read.
    rng = random.Random(9)
    for run in range(6):
        log = tmp_path / f"writer-random-{run}.log"
        process = Process([sys.executable, str(writer), str(models), str(template),
                           str(project), "0"], {**os.environ}, log, cwd=REPO)
        try:
            _wait_for("the writer started", lambda log=log: "ready" in log.read_text(), 30,
                      log, every=0.01)
            time.sleep(rng.uniform(0.0, 0.6))  # the fault's moment, not a wait for a result
        finally:
            _sigkill_tree(process)
        assert checker.problems() == [], f"after random kill {run}"

    registry = Registry(LocalStore(root), tmp_path / "cache")
    champion = registry.champion(project)
    assert champion is not None and champion.get("checkpoint"), "no complete version at all"
    complete = [v["version"] for v in registry.versions(project)]
    reserved = json.loads((root / str(project) / "registry.json").read_text())["next"] - 1
    orphans = sorted(p.name for p in (root / str(project)).glob(".*"))

    # A real training, SIGKILLed inside its commit: its checkpoint is in the registry, the
    # record naming it is not.
    env = {**os.environ, **_base_env(tmp_path, label_studio, "redis://127.0.0.1:1/0"),
           "TRAIN_STEPS": "2"}  # a training needs no Redis
    trainer = tmp_path / "trainer.py"
    trainer.write_text(TRAIN_PARKED_IN_COMMIT)
    marker = tmp_path / "train-parked"
    process = Process([sys.executable, str(trainer), str(marker),
                       str(root / str(project) / "registry.json"), "train", "--project",
                       str(project)], env, tmp_path / "train-killed.log", cwd=REPO)
    try:
        _wait_for("the training reached its commit",
                  lambda: marker.exists() or not process.running(), 150,
                  tmp_path / "train-killed.log", every=0.1)
        assert marker.exists(), (tmp_path / "train-killed.log").read_text()[-3000:]
    finally:
        _sigkill_tree(process)
    killed = f"{ARCH}-v{reserved + 1}"
    assert (root / str(project) / f"{killed}.pt").exists(), "parked after the upload"
    assert killed not in [v["version"] for v in registry.versions(project)]
    assert registry.champion(project) == champion
    assert checker.problems() == []

    # A later training succeeds: it starts from the champion's checkpoint, records a new
    # complete version under a new name, and leaves nothing half-written behind.
    done = subprocess.run([mlassist_bin(), "train", "--project", str(project)], env=env,
                          capture_output=True, text=True, timeout=150, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    after = registry.versions(project)
    assert [v["version"] for v in after][:-1] == complete
    latest = after[-1]
    assert latest["version"] == f"{ARCH}-v{reserved + 2}", latest["version"]
    assert latest["started_from"] == f"champion {champion['version']}"
    assert latest["labeled_tasks"] == 12 and latest["train_labels"] + latest["val_images"] == 12
    assert checker.problems() == []
    load_checkpoint(registry.checkpoint_path(project, latest["version"]))
    print(f"registry: {len(parked_at) + 6 + 1} writers killed ({parked_at}); "
          f"{len(complete)} of {reserved} reserved versions complete, the rest never listed; "
          f"leftover temp files: {len(orphans)}; then {latest['version']} trained, "
          f"{latest['status']}")
    reliability.fault_survived("registry writers SIGKILLed in every write window and a "
                               "training SIGKILLed inside its commit")
