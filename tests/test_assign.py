"""Workload split: the pure plan, then `mlassist assign` against a real Label Studio with the
webhook -> worker top-up: three labelers, 250 tasks, 75 each in views of their own, no task in
two views, and labeling 10 in one view refills it to 75. Then the top-up at scale: it reads
only what the plan can change (the same requests at 500 and 3,000 tasks), writes a labeler's
batch in one request, and leaves the same assignments as the plan over every task."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest
import requests
from label_studio_sdk import LabelStudio

from backend.core.errors import LabelStudioError
from backend.demo.localstack import Process, free_port
from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth
from backend.tools.assign import FIELD, TaskState, decode, encode, plan, task_state, top_up
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


class CountingAPI:
    """The Label Studio adapter with every call counted by name (the tool's only way out)."""

    def __init__(self, api: LabelStudioAPI, refuse: set[str] | None = None) -> None:
        self.api = api
        self.calls: Counter[str] = Counter()
        self.refuse = refuse or set()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.api, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if name in self.refuse:
                raise LabelStudioError(f"Label Studio has no {name} (HTTP 404)")
            return method(*args, **kwargs)
        return counted

    def top_up(self, project: int, emails: list[str], batch: int,
               overlap: int = 1) -> dict[str, Any]:
        self.calls.clear()
        return top_up(cast(LabelStudioAPI, self), project, emails, batch, overlap)


def all_states(api: LabelStudioAPI, project: int) -> list[TaskState]:
    """Every task's state by a full walk (what the top-up read before it was bounded)."""
    found, after = [], 0
    while page := api.task_page(project, after, 1000):
        found += [task_state(task) for task in page]
        after = int(page[-1]["id"])
    return found


def held(api: LabelStudioAPI, project: int) -> dict[int, frozenset[str]]:
    return {t.id: t.assignees for t in all_states(api, project)}


def expected(api: LabelStudioAPI, project: int, labelers: dict[str, int], batch: int,
             overlap: int = 1) -> dict[int, frozenset[str]]:
    """The assignments the pure plan over every task leaves."""
    tasks = all_states(api, project)
    changes = plan(tasks, labelers, batch, overlap).changes
    return {t.id: changes.get(t.id, t.assignees) for t in tasks}


def new_project(client: LabelStudio, api: LabelStudioAPI, tasks: int) -> tuple[int, list[int]]:
    project = int(client.projects.create(title=f"assign-{tasks}", label_config=CONFIG).id)
    for start in range(0, tasks, 5000):
        api.import_tasks(project, [{"image": f"https://img.example.com/{i}.jpg"}
                                   for i in range(start, min(tasks, start + 5000))])
    return project, sorted(held(api, project))


def make_labelers(client: LabelStudio, count: int) -> dict[str, int]:
    stamp = time.monotonic_ns()
    made = [client.users.create(email=f"l{i}-{stamp}@example.com", username=f"l{i}-{stamp}")
            for i in range(count)]
    return {str(user.email): int(user.id) for user in made}


@pytest.fixture
def ls_api(label_studio: LabelStudioServer) -> LabelStudioAPI:
    return LabelStudioAPI(LabelStudioAuth(label_studio.url, ADMIN_TOKEN))


@pytest.mark.e2e
def test_the_assignee_filters_split_tasks_and_the_bulk_write_keeps_other_data(
        client: LabelStudio, ls_api: LabelStudioAPI) -> None:
    """Label Studio 1.23.2's filters on a data field: `contains` "," finds the assigned tasks;
    the unassigned ones (no field, or an emptied one) take two filters; the bulk write sets
    only the field."""
    from backend.tools.assign import ASSIGNED, UNASSIGNED

    project, ids = new_project(client, ls_api, 6)
    ls_api.update_task(ids[1], data={"image": "https://img.example.com/1.jpg", FIELD: ""})
    ls_api.set_data_field(project, ids[2:4], FIELD, ",a@x,")
    ls_api.set_data_field(project, [ids[4]], FIELD, ",a@x,b@y,")
    ls_api.set_data_field(project, [ids[5]], FIELD, ",a@x,")
    ls_api.set_data_field(project, [ids[5]], FIELD, "")

    def matching(where: dict) -> list[int]:
        return [t["id"] for t in ls_api.task_page(project, 0, 100, where=[where])]
    assert matching(ASSIGNED) == ids[2:5]
    no_field, emptied = (matching(where) for where in UNASSIGNED)
    assert set(no_field) >= {ids[0]} and set(emptied) == {ids[1], ids[5]}
    assert sorted({*no_field, *emptied}) == [ids[0], ids[1], ids[5]]
    # Why two walks: `not_contains` leaves out the task that has no field at all.
    not_contains = {**ASSIGNED, "operator": "not_contains"}
    assert matching(not_contains) == [ids[1], ids[5]]
    assert ls_api.task_data(project, ids[4]) == {"image": "https://img.example.com/4.jpg",
                                                  FIELD: ",a@x,b@y,"}
    assert ls_api.task_data(project, ids[5]) == {"image": "https://img.example.com/5.jpg",
                                                  FIELD: ""}
    assert FIELD not in ls_api.task_data(project, ids[0])


@pytest.mark.e2e
def test_a_top_up_after_one_label_costs_the_same_requests_at_any_project_size(
        client: LabelStudio, ls_api: LabelStudioAPI) -> None:
    labelers = make_labelers(client, 3)
    emails, first = list(labelers), sorted(labelers)[0]
    costs = []
    for size in (500, 3000):
        project, ids = new_project(client, ls_api, size)
        api = CountingAPI(ls_api)
        want = expected(ls_api, project, labelers, 20)
        done = api.top_up(project, emails, 20)
        assert done["open"] == dict.fromkeys(emails, 20) and done["changed_tasks"] == 60
        assert held(ls_api, project) == want
        assert sorted(i for i, a in want.items() if a) == ids[:60], "the first tasks"
        assert api.calls["set_data_field"] == 3, "one write per labeler's batch"
        first_reads = api.calls["task_page"]

        mine = min(i for i, a in want.items() if first in a)
        client.annotations.create(id=mine, result=[])
        want = expected(ls_api, project, labelers, 20)
        done = api.top_up(project, emails, 20)
        assert held(ls_api, project) == want and done["changed_tasks"] == 1
        assert want[ids[60]] == {first}, "the next task in id order"
        assert api.calls["set_data_field"] == 1 and not api.calls["update_task"]
        costs.append((first_reads, api.calls["task_page"], sum(api.calls.values())))
    assert costs[0] == costs[1], costs
    # Reads: the assigned tasks, then one page of each unassigned walk; users, the write, views.
    assert costs[1][1] <= 3 and costs[1][2] <= 6, costs


@pytest.mark.e2e
def test_a_dropped_labeler_gives_back_open_tasks_and_overlap_two_holds(
        client: LabelStudio, ls_api: LabelStudioAPI) -> None:
    labelers = make_labelers(client, 3)
    emails = sorted(labelers)
    project, ids = new_project(client, ls_api, 1500)
    api = CountingAPI(ls_api)
    api.top_up(project, emails, 30)
    for task_id in ids[:5]:  # labeled: it stays with whoever held it
        client.annotations.create(id=task_id, result=[])
    dropped = next(iter(held(ls_api, project)[ids[0]]))
    kept = [e for e in emails if e != dropped]
    two = {e: labelers[e] for e in kept}
    want = expected(ls_api, project, two, 40)
    done = api.top_up(project, kept, 40)
    now = held(ls_api, project)
    assert now == want and done["open"] == dict.fromkeys(kept, 40)
    assert now[ids[0]] == {dropped}, "a labeled task keeps its history"
    assert not any(dropped in a for i, a in now.items() if i not in ids[:5])

    # Overlap 2: a task held by one labeler that still needs another, one labeled once.
    project, ids = new_project(client, ls_api, 1500)
    ls_api.set_data_field(project, [ids[3]], FIELD, encode([emails[0]]))
    client.annotations.create(id=ids[0], result=[])
    want = expected(ls_api, project, labelers, 30, overlap=2)
    done = api.top_up(project, emails, 30, overlap=2)
    now = held(ls_api, project)
    assert now == want and done["open"] == dict.fromkeys(emails, 30)
    assert len(now[ids[0]]) == 2 and len(now[ids[3]]) == 2 and emails[0] in now[ids[3]]
    assert sum(len(a) for a in now.values()) == 90
    assert api.calls["task_page"] <= 3, api.calls


@pytest.mark.e2e
def test_without_the_bulk_action_the_top_up_writes_task_by_task(
        client: LabelStudio, ls_api: LabelStudioAPI) -> None:
    labelers = make_labelers(client, 2)
    project, ids = new_project(client, ls_api, 50)
    api = CountingAPI(ls_api, refuse={"set_data_field"})
    want = expected(ls_api, project, labelers, 5)
    api.top_up(project, list(labelers), 5)
    assert held(ls_api, project) == want
    assert api.calls["update_task"] == api.calls["task_data"] == 10
    assert ls_api.task_data(project, ids[0])["image"] == "https://img.example.com/0.jpg"
