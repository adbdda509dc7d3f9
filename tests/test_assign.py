"""Workload split: the pure plan, then `mlassist assign` against a real Label Studio with the
webhook -> worker top-up: three labelers, 250 tasks, 75 each in views of their own, no task in
two views, and labeling 10 in one view refills it to 75."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import requests
from label_studio_sdk import LabelStudio

from backend.demo.localstack import Process, free_port
from backend.tools.assign import TaskState, decode, encode, plan
from tests.labels import CONFIG
from tests.labelstudio import ADMIN_TOKEN, LabelStudioServer
from tests.redis_server import RedisServer
from tests.services import Backend, mlassist_bin

LABELERS = {"ann@example.com": 11, "bo@example.com": 12, "cy@example.com": 13}


def states(n: int, assigned: dict[int, set[str]] | None = None,
           annotated: dict[int, set[int]] | None = None) -> list[TaskState]:
    assigned, annotated = assigned or {}, annotated or {}
    return [TaskState(i, frozenset(assigned.get(i, set())), frozenset(annotated.get(i, set())),
                      len(annotated.get(i, set()))) for i in range(1, n + 1)]


def apply(tasks: list[TaskState], changes: dict[int, frozenset[str]]) -> list[TaskState]:
    return [TaskState(t.id, changes.get(t.id, t.assignees), t.annotators, t.annotations)
            for t in tasks]


def test_three_labelers_get_disjoint_batches_in_id_order() -> None:
    tasks = states(250)
    result = plan(tasks, LABELERS, 75)
    assert result.open_tasks == dict.fromkeys(LABELERS, 75)
    owners = [a for a in result.changes.values()]
    assert all(len(a) == 1 for a in owners) and len(owners) == 225
    assert set(result.changes) == set(range(1, 226)), "the first tasks, in id order"
    assert plan(apply(tasks, result.changes), LABELERS, 75).changes == {}, "idempotent"


def test_labeling_refills_only_that_batch_with_fresh_tasks() -> None:
    tasks = apply(states(250), plan(states(250), LABELERS, 75).changes)
    ann = sorted(t.id for t in tasks if "ann@example.com" in t.assignees)[:10]
    labeled = [TaskState(t.id, t.assignees, frozenset({11}) if t.id in ann else t.annotators,
                         1 if t.id in ann else t.annotations) for t in tasks]
    refill = plan(labeled, LABELERS, 75)
    assert refill.open_tasks == dict.fromkeys(LABELERS, 75)
    assert all(v == {"ann@example.com"} for v in refill.changes.values())
    assert set(refill.changes) == set(range(226, 236))


def test_not_enough_tasks_are_shared_fairly() -> None:
    result = plan(states(100), LABELERS, 75)
    assert sorted(result.open_tasks.values()) == [33, 33, 34]


def test_overlap_gives_each_task_to_that_many_labelers_never_twice_to_one() -> None:
    result = plan(states(100), LABELERS, 60, overlap=2)
    assert all(len(a) == 2 for a in result.changes.values()) and len(result.changes) == 90
    assert result.open_tasks == dict.fromkeys(LABELERS, 60)
    # Once a labeler annotated a task it is no longer open for them: they get another one,
    # and the task, still short of two annotations, stays with the other labeler.
    tasks = apply(states(100), result.changes)
    first = tasks[0]
    who = sorted(first.assignees)[0]
    done = [TaskState(first.id, first.assignees, frozenset({LABELERS[who]}), 1), *tasks[1:]]
    again = plan(done, LABELERS, 60, overlap=2)
    assert again.open_tasks[who] == 60
    assert first.id not in again.changes
    assert [who in a for a in again.changes.values()] == [True]


def test_a_labeler_dropped_from_the_list_gives_back_open_tasks() -> None:
    tasks = apply(states(30), plan(states(30), LABELERS, 10).changes)
    two = {k: v for k, v in LABELERS.items() if k != "cy@example.com"}
    result = plan(tasks, two, 15)
    assert result.open_tasks == dict.fromkeys(two, 15)
    assert not any("cy@example.com" in a for a in result.changes.values())
    assert encode(["b", "a"]) == ",a,b," and decode(",a,b,") == {"a", "b"}
    assert decode(None) == frozenset() and encode([]) == ""


def view_tasks(label_studio: LabelStudioServer, view: int, project: int) -> set[int]:
    found = requests.get(f"{label_studio.url}/api/tasks", timeout=30,
                         headers={"Authorization": f"Token {ADMIN_TOKEN}"},
                         params={"view": view, "project": project, "page_size": 1000}).json()
    return {t["id"] for t in found["tasks"]}


@pytest.mark.e2e
def test_assign_views_and_worker_top_up_against_label_studio(
        tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudio,
        redis_server: RedisServer) -> None:
    from redis import Redis

    Redis.from_url(redis_server.url).flushall()
    emails = [f"labeler{i}-{time.monotonic_ns()}@example.com" for i in range(3)]
    for email in emails:
        client.users.create(email=email, username=email.split("@")[0])
    project = client.projects.create(title="assign", label_config=CONFIG).id
    requests.post(f"{label_studio.url}/api/projects/{project}/import", timeout=60,
                  headers={"Authorization": f"Token {ADMIN_TOKEN}"},
                  json=[{"image": f"https://img.example.com/{i}.jpg"} for i in range(250)]
                  ).raise_for_status()
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_URL": label_studio.url,
           "LABEL_STUDIO_API_KEY": ADMIN_TOKEN, "REDIS_URL": redis_server.url,
           "PORT": str(port), "BACKEND_PUBLIC_URL": f"http://127.0.0.1:{port}",
           "WEBHOOK_SECRET": "assign-secret", "MODEL_WEIGHTS": "none",
           "MODEL_DIR": str(tmp_path / "models"), "TRAIN_MIN_LABELED": "1000"}
    backend = Backend(env, tmp_path / "backend.log").wait()
    worker = Process([mlassist_bin(), "worker", "--queues", "housekeeping"], env,
                     tmp_path / "worker.log")
    try:
        def run(*args: str) -> str:
            done = subprocess.run([mlassist_bin(), *args], env=env, capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            return done.stdout

        run("connect", "--project", str(project))
        run("assign", "--project", str(project), "--labelers", ",".join(emails),
            "--batch", "75")
        views = {v.data["title"]: v.id for v in client.views.list(project=project)}
        held = {email: view_tasks(label_studio, views[f"mlassist: {email}"], project)
                for email in emails}
        assert [len(tasks) for tasks in held.values()] == [75, 75, 75]
        assert len(set.union(*held.values())) == 225, "no task in two views"

        first = sorted(held[emails[0]])[:10]
        for task_id in first:  # labeled by someone: it leaves the view, the worker refills
            client.annotations.create(id=task_id, result=[])
        deadline = time.monotonic() + 60
        while True:
            now = view_tasks(label_studio, views[f"mlassist: {emails[0]}"], project)
            if len(now) == 75 and not now & set(first):
                break
            assert time.monotonic() < deadline and worker.running(), \
                (len(now), worker.log.read_text()[-3000:])
            time.sleep(1)
        others = [view_tasks(label_studio, views[f"mlassist: {e}"], project)
                  for e in emails[1:]]
        assert [len(o) for o in others] == [75, 75]
        assert not (now & others[0]) and not (now & others[1]) and not (others[0] & others[1])

        refused = subprocess.run([mlassist_bin(), "assign", "--project", str(project),
                                  "--labelers", "nobody@example.com"], env=env,
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "invite them first" in refused.stderr
    finally:
        worker.stop()
        backend.stop()
