"""Retraining jobs against a real Redis: policy, single flight, secrets, reconciliation,
locks that expire, and a push-back that resumes without duplicates."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from redis import Redis
from rq import Queue, SimpleWorker

from backend.http.app import create_app
from backend.jobs import pushback as jobpushback
from backend.jobs import queues as jobqueues
from backend.jobs import tasks as jobtasks
from backend.jobs.policy import import_batch, next_training_at, training_due
from backend.jobs.queues import TRAINING_QUEUE, JobQueue, ProjectLock, key
from backend.model.registry import LocalStore, Registry
from tests.conftest import make_settings
from tests.fakes import FixedDetector, holder_for
from tests.labels import FakeLabelStudio, exported_tasks, unlabeled_tasks
from tests.redis_server import RedisServer
from tests.test_training import fetcher

PROJECT = 3
SECRET = "hook-secret-123"


# -- policy ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("labeled", "last", "forced", "due", "next_at"), [
    (29, None, False, False, 30),
    (30, None, False, True, 30),
    (5, None, True, True, 30),
    (44, 30, False, False, 45),     # growth 0.5 of 30 = 15 new labels
    (45, 30, False, True, 45),
    (250, 200, False, True, 250),   # every 50 once 50 < growth step (100)
    (249, 200, False, False, 250),
])
def test_training_policy(labeled: int, last: int | None, forced: bool, due: bool,
                         next_at: int) -> None:
    decision = training_due(labeled, last, forced=forced, min_labeled=30, every=50, growth=0.5)
    assert (decision.due, decision.next_at) == (due, next_at)


def test_growth_off_means_every_n() -> None:
    assert next_training_at(30, 30, 50, 0.0) == 80


@pytest.mark.parametrize(("import_s", "forward_s", "batch"), [
    (18.0, 0.0145, 10_000),  # 118k tasks, a stock Label Studio: 12,414 wanted, the ceiling
    (3.0, 0.0145, 2_069),    # 20k tasks: 3 s / (0.1 x 14.5 ms) = 2,068.97 -> 2,069
    (0.5, 0.0145, 1_000),    # fast import (344 wanted): never below the page
    (0.0, 0.0145, 1_000),    # nothing measured yet
    (5.0, 0.0, 1_000),
])
def test_import_batch_spreads_the_fixed_cost_over_enough_forward_time(
        import_s: float, forward_s: float, batch: int) -> None:
    assert import_batch(import_s, forward_s, floor=1_000, ceiling=10_000, share=0.1) == batch


# -- the web side ---------------------------------------------------------------------------

def app_client(redis_server: RedisServer, **env: str):
    settings = make_settings(REDIS_URL=redis_server.url, WEBHOOK_SECRET=SECRET,
                             BASIC_AUTH_USER="ml", BASIC_AUTH_PASS="pw", **env)
    return create_app(settings, holder=holder_for(FixedDetector([]))).test_client()


def event(action: str, project: int = PROJECT) -> dict:
    return {"action": action, "project": {"id": project, "token": "project-token-xyz"},
            "annotation": {"id": 1}}


def test_webhook_storm_collapses_into_one_pending_training(redis_db: Redis,
                                                           redis_server: RedisServer) -> None:
    client = app_client(redis_server)
    headers = {"X-MLAssist-Secret": SECRET}
    actions = ["START_TRAINING", "ANNOTATION_CREATED", "ANNOTATION_UPDATED",
               "ANNOTATIONS_DELETED"]
    answers = Counter()
    for i in range(500):
        body = client.post("/webhook", json=event(actions[i % 4]), headers=headers).get_json()
        answers[str(body["queued"]).startswith("train-")] += 1
    assert answers == {True: 1, False: 499}
    assert Queue(TRAINING_QUEUE, connection=redis_db).count == 1
    assert JobQueue(redis_db).projects() == [PROJECT]


def test_wrong_or_missing_secret_enqueues_nothing(redis_db: Redis,
                                                  redis_server: RedisServer) -> None:
    client = app_client(redis_server)
    wrong_basic = {"Authorization": "Basic " + base64.b64encode(b"ml:nope").decode()}
    for headers in ({}, {"X-MLAssist-Secret": "guess"}, wrong_basic):
        response = client.post("/webhook", json=event("START_TRAINING"), headers=headers)
        assert response.status_code == 401
        assert "X-MLAssist-Secret" in response.get_json()["error"]
    assert Queue(TRAINING_QUEUE, connection=redis_db).count == 0
    right_basic = {"Authorization": "Basic " + base64.b64encode(b"ml:pw").decode()}
    assert client.post("/webhook", json=event("START_TRAINING"),
                       headers=right_basic).status_code == 200


def test_tasks_created_queues_predictions(redis_db: Redis, redis_server: RedisServer) -> None:
    client = app_client(redis_server)
    body = {"action": "TASKS_CREATED", "project": {"id": 4}, "tasks": [{"id": 10}, {"id": 11}]}
    answer = client.post("/webhook", json=body, headers={"X-MLAssist-Secret": SECRET}).get_json()
    job = Queue("prelabel", connection=redis_db).fetch_job(answer["queued"])
    assert job is not None and job.args == (4, [10, 11])


# -- the worker side --------------------------------------------------------------------------

class FakeContext:
    """jobs.tasks.Context with a fake Label Studio, real Redis, real registry and training."""

    def __init__(self, tmp_path: Path, redis: Redis, api: FakeLabelStudio, **env: str) -> None:
        values = {"MODEL_DIR": str(tmp_path / "models"),
                  "IMAGE_CACHE_DIR": str(tmp_path / "images"), "VALIDATION_FRACTION": "0.3",
                  "MIN_VALIDATION_IMAGES": "2", "TRAIN_BATCH_SIZE": "2", "TRAIN_STEPS": "2",
                  "MIN_FIRST_AP50": "0", "PROMOTION_MARGIN": "0", "TRAIN_MIN_LABELED": "10",
                  "TRAIN_EVERY": "1000", "TRAIN_GROWTH": "0", "PUSHBACK_BATCH": "4",
                  "SCORE_THRESHOLD": "0", "PRELABEL_UNCALIBRATED": "show"}
        self.env = {**values, **env}
        self.settings = make_settings(**self.env)
        self.redis = redis
        self.queue = JobQueue(redis)
        self.api = api
        self.fetcher = fetcher()
        self.registry = Registry(LocalStore(tmp_path / "registry"), tmp_path / "cache")


@pytest.fixture
def world(tmp_path: Path, redis_db: Redis, monkeypatch: pytest.MonkeyPatch):
    api = FakeLabelStudio(exported_tasks(range(1, 13)) + unlabeled_tasks(range(100, 110)))
    ctx = FakeContext(tmp_path, redis_db, api)
    for module in (jobtasks, jobpushback):  # the job functions build their context here
        monkeypatch.setattr(module, "Context", lambda settings: ctx)
        monkeypatch.setattr(module, "Settings", SimpleNamespace(from_env=lambda: ctx.settings))
    return ctx


def world_env(ctx: FakeContext) -> dict[str, str]:
    return dict(ctx.env)


def work(redis: Redis) -> None:
    queues = [Queue(name, connection=redis) for name in jobqueues.ALL_QUEUES]
    SimpleWorker(queues, connection=redis).work(burst=True)


def test_storm_trains_once_and_pushes_back(world: FakeContext,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import backend.model.training as training_module

    jobs = world.queue
    original = training_module.train_round
    trainings = []

    def storm_during_training(*args, **kwargs):
        trainings.append(1)
        for _ in range(300):  # labelers keep working (and LS keeps signalling) meanwhile
            jobs.request_training(PROJECT)
        return original(*args, **kwargs)

    monkeypatch.setattr(training_module, "train_round", storm_during_training)
    for _ in range(200):
        jobs.request_training(PROJECT)
    work(world.redis)
    assert len(trainings) == 1, "the pending check finds nothing new due: no second round"
    champion = world.registry.champion(PROJECT)
    assert champion is not None
    unlabeled = [t for t in world.api.tasks if not t.get("annotations")]
    for task in unlabeled:
        versions = [p["model_version"] for p in task.get("predictions", [])]
        assert versions == [champion["version"]], task["id"]
    assert world.api.model_version == champion["version"]
    assert jobs.pushback_done(PROJECT) == {"version": champion["version"], "tasks": 22}
    assert world.redis.keys(key("lock", "*")) == []


def test_new_labels_during_training_run_once_more(world: FakeContext,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import backend.model.training as training_module

    original = training_module.train_round
    rounds = []

    def labelers_add_during_training(*args, **kwargs):
        rounds.append(1)
        result = original(*args, **kwargs)
        if len(rounds) == 1:  # 12 more labels arrive after the round read its data
            world.api.tasks.extend(exported_tasks(range(200, 212)))
        return result

    monkeypatch.setattr(training_module, "train_round", labelers_add_during_training)
    world.settings = make_settings(**{**world_env(world), "TRAIN_EVERY": "10"})
    jobs = world.queue
    jobs.request_training(PROJECT)
    work(world.redis)
    assert len(rounds) == 2
    assert [v["train_labels"] + v["val_images"] for v in world.registry.versions(PROJECT)] \
        == [12, 24]


def test_lost_webhook_is_caught_by_reconciliation(world: FakeContext) -> None:
    world.queue.remember_project(PROJECT)  # the project was seen once; no event since
    queued = jobtasks.reconcile(world)
    assert queued["training"] == [PROJECT]
    work(world.redis)
    assert world.registry.champion(PROJECT) is not None
    # Nothing new since: a second pass queues a check that finds nothing due.
    jobtasks.reconcile(world)
    work(world.redis)
    assert len(world.registry.versions(PROJECT)) == 1


def test_pushback_killed_halfway_resumes_without_duplicates(world: FakeContext) -> None:
    world.queue.request_training(PROJECT, forced=True)
    queue = Queue(TRAINING_QUEUE, connection=world.redis)
    SimpleWorker([queue], connection=world.redis).work(burst=True)  # training only
    version = world.registry.champion(PROJECT)["version"]
    stopped = jobtasks.push_back(PROJECT, world, stop_after=lambda seen: seen >= 4)
    assert stopped["status"] == "stopped"
    first = sum(len(batch) for batch in world.api.imports)
    assert 0 < first < 10
    done = jobtasks.push_back(PROJECT, world)
    assert done["status"] == "done" and done["imported"] == 10 - first
    per_task = Counter(p["task"] for batch in world.api.imports for p in batch)
    assert sorted(per_task) == list(range(100, 110)) and set(per_task.values()) == {1}
    # A completed pass resets the cursor, so a rerun walks every task again and must find
    # each one already holding the version.
    again = jobtasks.push_back(PROJECT, world)
    assert again["imported"] == 0 and again["status"] == "done"
    assert sum(len(batch) for batch in world.api.imports) == 10
    assert all(p["model_version"] == version for batch in world.api.imports for p in batch)


def test_a_slow_import_gathers_pages_into_fewer_imports(world: FakeContext,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Label Studio's import costs a fixed 0.5 s here (a large project): after the first page
    the push-back gathers the rest while it runs, then imports them at once."""
    world.queue.request_training(PROJECT, forced=True)
    SimpleWorker([Queue(TRAINING_QUEUE, connection=world.redis)],
                 connection=world.redis).work(burst=True)
    world.settings = make_settings(**{**world.env, "PUSHBACK_BATCH": "2"})
    fast_import = world.api.import_predictions

    def slow_import(project: int, predictions: list[dict]) -> None:
        time.sleep(0.5)
        fast_import(project, predictions)

    monkeypatch.setattr(world.api, "import_predictions", slow_import)
    done = jobtasks.push_back(PROJECT, world)
    assert done["status"] == "done" and done["imported"] == 10
    # Five pages of 2; one import per page would be five calls of 0.5 s.
    assert [len(batch) for batch in world.api.imports] == [2, 8]
    per_task = Counter(p["task"] for batch in world.api.imports for p in batch)
    assert sorted(per_task) == list(range(100, 110)) and set(per_task.values()) == {1}


def test_new_tasks_get_champion_predictions(world: FakeContext) -> None:
    assert jobtasks.predict_new_tasks(PROJECT, [100], world) == {"status": "no champion"}
    world.queue.request_training(PROJECT, forced=True)
    SimpleWorker([Queue(TRAINING_QUEUE, connection=world.redis)],
                 connection=world.redis).work(burst=True)
    result = jobtasks.predict_new_tasks(PROJECT, [100, 101], world)
    assert result["imported"] == 2
    assert jobtasks.predict_new_tasks(PROJECT, [100, 101], world)["imported"] == 0


LOCK_HOLDER = """
import sys, time
from redis import Redis
from backend.jobs import queues
queues.LOCK_TTL_S = 2  # the default ttl
queues.HEARTBEAT_S = 0.5
with queues.ProjectLock(Redis.from_url(sys.argv[1]), "train:3", wait=0):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_sigkilled_holder_leaves_no_stuck_lock(redis_db: Redis,
                                               redis_server: RedisServer) -> None:
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, redis_server.url],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    time.sleep(3)  # heartbeats keep it beyond its 2 s expiry while the holder lives
    with pytest.raises(TimeoutError):
        ProjectLock(redis_db, "train:3", wait=0).__enter__()
    holder.kill()
    holder.wait()
    deadline = time.monotonic() + 5
    while redis_db.exists(key("lock", "train:3")) and time.monotonic() < deadline:
        time.sleep(0.2)
    with ProjectLock(redis_db, "train:3", wait=0):
        pass


def test_concurrent_storm_queues_one_job(redis_db: Redis) -> None:
    import threading

    jobs = [JobQueue(redis_db) for _ in range(20)]
    barrier = threading.Barrier(len(jobs))

    def storm(queue: JobQueue) -> None:
        barrier.wait()
        for _ in range(50):
            queue.request_training(PROJECT)

    threads = [threading.Thread(target=storm, args=(q,)) for q in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Queue(TRAINING_QUEUE, connection=redis_db).count == 1


def test_setup_makes_a_project_known_to_reconciliation(redis_db: Redis,
                                                       redis_server: RedisServer) -> None:
    from tests.labels import CONFIG

    client = app_client(redis_server)
    auth = {"Authorization": "Basic " + base64.b64encode(b"ml:pw").decode()}
    answer = client.post("/setup", json={"project": "8.1700000000", "schema": CONFIG},
                         headers=auth)
    assert answer.status_code == 200
    assert JobQueue(redis_db).projects() == [8]


def test_failed_tasks_keep_the_pushback_due(world: FakeContext) -> None:
    broken = next(t for t in world.api.tasks if t["id"] == 105)
    broken["data"]["image"] = "data:image/png;base64,AAAA"
    world.queue.remember_project(PROJECT)
    world.queue.request_training(PROJECT, forced=True)
    SimpleWorker([Queue(TRAINING_QUEUE, connection=world.redis)],
                 connection=world.redis).work(burst=True)
    first = jobtasks.push_back(PROJECT, world)
    assert (first["imported"], first["failed"]) == (9, 1)
    assert world.queue.pushback_done(PROJECT) is None
    assert jobtasks.reconcile(world)["pushback"] == [PROJECT]


def test_lost_task_events_are_reconciled(world: FakeContext) -> None:
    world.queue.remember_project(PROJECT)
    world.queue.request_training(PROJECT, forced=True)
    work(world.redis)  # trains, pushes back, marks done
    assert jobtasks.reconcile(world)["pushback"] == []
    world.api.tasks.extend(unlabeled_tasks(range(300, 303)))  # TASKS_CREATED never arrived
    assert jobtasks.reconcile(world)["pushback"] == [PROJECT]
    work(world.redis)
    for task in world.api.tasks[-3:]:
        assert len(task["predictions"]) == 1


def test_busy_project_defers_instead_of_parking_a_worker(world: FakeContext) -> None:
    jobs = world.queue
    first = jobs.request_training(PROJECT, forced=True)
    with ProjectLock(world.redis, f"train:{PROJECT}", wait=0):  # another training runs
        SimpleWorker([Queue(TRAINING_QUEUE, connection=world.redis)],
                     connection=world.redis).work(burst=True)
        pending = world.redis.get(key("pending", "train", PROJECT)).decode()
        assert pending != first, "the busy job handed its pending slot to a deferred one"
        assert jobs.request_training(PROJECT) is None, "still one pending job"
    from rq.registry import ScheduledJobRegistry

    scheduled = ScheduledJobRegistry(queue=Queue(TRAINING_QUEUE, connection=world.redis))
    assert scheduled.get_job_ids() == [pending]
    assert jobs.is_forced(PROJECT), "the forced request survives for the deferred job"


def test_a_lost_lock_stops_the_job_before_it_writes(redis_db: Redis) -> None:
    lock = ProjectLock(redis_db, "train:9", wait=0, ttl=1)
    with lock:
        redis_db.set(key("lock", "train:9"), "someone else")  # expired and taken meanwhile
        deadline = time.monotonic() + 5
        while not lock.lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(RuntimeError, match="was lost"):
            lock.ensure()
    assert redis_db.get(key("lock", "train:9")) == b"someone else", "not released by us"
