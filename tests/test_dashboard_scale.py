"""`/dashboard` and `/status` at scale (issue 16) against a real Label Studio: the dashboard's
counts of unlabeled tasks and open batches equal what the walk over every task gave, and the
requests per dashboard and per status do not grow with the project's tasks; the stats cache
computes in the background, a first request waits for it a bounded time (the page then says the
numbers are coming), later ones get cached numbers refreshed in the background."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
from label_studio_sdk import LabelStudio

from backend.jobs.status import project_status
from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth
from backend.tools.assign import FIELD, decode, encode, view_filters
from backend.tools.dashboard import StatsCache, project_stats
from benchmarks.export import tasks as labeled_tasks
from tests.conftest import make_settings
from tests.labels import CONFIG
from tests.labelstudio import ADMIN_EMAIL, ADMIN_TOKEN, LabelStudioServer

CHAMPION, OLDER = "det-v2", "det-v1"
GHOST = "ghost@example.com"  # assigned, but no Label Studio user


class CountingAPI(LabelStudioAPI):
    """The real client (our adapter boundary), counting its requests."""

    requests = 0

    def _call(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.requests += 1
        return super()._call(*args, **kwargs)


class OneChampion:
    """The registry's answers project_status reads: a champion, no review."""

    def champion(self, project: int) -> dict[str, Any]:
        return {"version": CHAMPION, "status": "champion", "metrics": {"ap50": 0.5}}

    def versions(self, project: int) -> list[dict[str, Any]]:
        return [self.champion(project)]

    def review(self, project: int) -> None:
        return None


def prediction(n: int, version: str) -> dict:
    return {"model_version": version, "score": 0.5, "result": [{
        "id": f"p{n}", "from_name": "label", "to_name": "image", "type": "rectanglelabels",
        "original_width": 640, "original_height": 480,
        "value": {"x": 10, "y": 10, "width": 20, "height": 20, "rotation": 0,
                  "rectanglelabels": ["circle"]}}]}


def head_tasks() -> list[dict]:
    """The first 100 tasks of both projects: 20 labeled (imported), then assigned ones with
    and without pre-labels of two versions."""
    made = labeled_tasks(20, 2, 0)
    for task in made[:6]:
        task["data"][FIELD] = encode([ADMIN_EMAIL])  # labeled: nobody's open task
    for n in range(20, 100):
        who = [ADMIN_EMAIL] if n < 60 else [GHOST] if n < 80 else [ADMIN_EMAIL, GHOST]
        task: dict = {"data": {"image": f"https://img.example.com/{n}.jpg", FIELD: encode(who)}}
        if n % 3 == 0:
            task["predictions"] = [prediction(n, CHAMPION if n % 2 else OLDER)]
        made.append(task)
    return made


def tail_tasks(count: int) -> list[dict]:
    """Unassigned unlabeled tasks, a third pre-labeled by the champion, a sixth by the older."""
    made = []
    for n in range(100, 100 + count):
        task: dict = {"data": {"image": f"https://img.example.com/{n}.jpg"}}
        if n % 3 == 0:
            task["predictions"] = [prediction(n, CHAMPION if n % 2 else OLDER)]
        made.append(task)
    return made


def build(client: LabelStudio, api: LabelStudioAPI, title: str, tail: int) -> int:
    """A project of 100 + `tail` tasks (one bulk import); the admin then labels 4 assigned
    tasks and skips 4 (two of them also assigned to the ghost)."""
    project = client.projects.create(title=title, label_config=CONFIG).id
    api.import_tasks(project, head_tasks() + tail_tasks(tail))
    ids = sorted(t["id"] for t in api.task_page(project, 0, 100))
    for task_id in ids[20:24]:
        client.annotations.create(id=task_id, result=prediction(0, "x")["result"])
    for task_id in [*ids[30:32], *ids[80:82]]:
        client.annotations.create(id=task_id, result=[], was_cancelled=True)
    return int(project)


def walked(api: LabelStudioAPI, project: int, full: bool) -> tuple[Counter, Counter]:
    """What the dashboard computed before issue 16, by reading every task (as it did, with the
    default fields, or with `fields=all`, the only ones that fill in `annotators`)."""
    users = {u.get("id"): str(u.get("email") or u.get("username") or u.get("id"))
             for u in api.users()}
    tasks: Counter = Counter()
    assigned_open: Counter = Counter()
    after = 0
    while page := api._task_walk(project, after, 1000, unlabeled_only=False, full=full):
        for task in page:
            labeled = int(task.get("total_annotations") or 0) > 0
            if not labeled:
                tasks["unlabeled_prelabeled" if int(task.get("total_predictions") or 0)
                      else "unlabeled_bare"] += 1
            annotators = {users.get(a) for a in task.get("annotators") or []}
            for email in decode((task.get("data") or {}).get(FIELD)):
                if email not in annotators and not labeled:
                    assigned_open[email] += 1
        after = int(page[-1]["id"])
    return tasks, assigned_open


@pytest.fixture(scope="module")
def projects(label_studio: LabelStudioServer, client: LabelStudio) -> dict[str, int]:
    api = LabelStudioAPI(LabelStudioAuth(label_studio.url, ADMIN_TOKEN))
    return {"small": build(client, api, "dashboard small", 20),
            "large": build(client, api, "dashboard large", 2900)}


@pytest.mark.e2e
def test_counts_equal_the_walk_over_every_task(label_studio: LabelStudioServer,
                                                projects: dict[str, int]) -> None:
    api = LabelStudioAPI(LabelStudioAuth(label_studio.url, ADMIN_TOKEN))
    admin = next(u["id"] for u in api.users() if u["email"] == ADMIN_EMAIL)
    for project in projects.values():
        tasks, walked_open = walked(api, project, full=False)
        _, meant_open = walked(api, project, full=True)
        stats = project_stats(api, project, [ADMIN_EMAIL, GHOST])
        for name in ("unlabeled_prelabeled", "unlabeled_bare"):
            assert stats["tasks"][name] == tasks[name], name
        opened = {row["labeler"]: row["open_batch"] for row in stats["labelers"]}
        # The admin holds 40 + 20 shared unlabeled tasks, labels 4 and skips 4: 52 open; the
        # ghost's 40 stay open. The old walk's `annotators` were empty: it counted skips.
        assert opened == {ADMIN_EMAIL: meant_open[ADMIN_EMAIL], GHOST: meant_open[GHOST]} \
            == {ADMIN_EMAIL: 52, GHOST: 40}
        assert walked_open == {ADMIN_EMAIL: 56, GHOST: 40}
        assert api.count_tasks(project, view_filters(ADMIN_EMAIL, admin, 1)["items"]) == 52, \
            "what the admin's Data Manager tab lists"
        assert stats["tasks"]["labeled_from_scratch"] + \
            stats["tasks"]["labeled_from_prelabel"] == 24
        assert project_stats(api, project, None)["labelers"][0]["open_batch"] is None
    large = project_stats(api, projects["large"], None)["tasks"]
    # Tasks 0-23 are labeled; of the others, those with n % 3 == 0 hold a pre-label.
    assert large["unlabeled_prelabeled"] == sum(1 for n in range(24, 3000) if n % 3 == 0)
    assert large["unlabeled_bare"] == 2976 - large["unlabeled_prelabeled"]


@pytest.mark.e2e
def test_requests_do_not_grow_with_the_tasks(label_studio: LabelStudioServer,
                                             projects: dict[str, int]) -> None:
    api = CountingAPI(LabelStudioAuth(label_studio.url, ADMIN_TOKEN))
    settings = make_settings()
    made: dict[str, dict[str, int]] = {}
    for size, project in projects.items():
        api.requests = 0
        project_stats(api, project, [ADMIN_EMAIL, GHOST])
        dashboard = api.requests
        api.requests = 0
        status = project_status(project, settings, api, OneChampion(), None)  # type: ignore
        made[size] = {"dashboard": dashboard, "status": api.requests,
                      "tasks": status["tasks"],
                      "prelabeled": status["tasks_with_champion_prelabels"]}
    assert made["small"]["tasks"] == 120 and made["large"]["tasks"] == 3000
    # The champion's pre-labels are on tasks 20 and up with n % 3 == 0 and n odd (the others
    # with n % 3 == 0 hold the older version's, which shares all but one character with it).
    assert made["small"]["prelabeled"] == sum(1 for n in range(20, 120) if n % 6 == 3)
    assert made["large"]["prelabeled"] == sum(1 for n in range(20, 3000) if n % 6 == 3)
    # users, two counts, the assigned unlabeled tasks and the labeled ones (a page each and
    # the empty page that ends a keyset walk), at 120 tasks as at 3,000 (the walk over every
    # task this replaced took a page per 1,000 tasks).
    assert made["large"]["dashboard"] == made["small"]["dashboard"] == 7
    assert made["large"]["status"] == made["small"]["status"] == 2


class SlowStats:
    """A compute function that counts its calls and can be held mid-computation."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()
        self.release.set()

    def __call__(self, api: Any, project: int, labelers: list[str] | None) -> dict[str, Any]:
        self.calls += 1
        number = self.calls
        self.release.wait(10)
        return {"number": number}


def test_cache_serves_stale_numbers_while_one_refresh_runs() -> None:
    compute = SlowStats()
    cache = StatsCache(ttl=0.2, compute=compute)
    first = cache.get(None, 7, None)  # type: ignore[arg-type]
    assert first["number"] == 1 and first["age_s"] < 0.2 and compute.calls == 1
    assert cache.get(None, 7, None)["number"] == 1 and compute.calls == 1  # type: ignore
    time.sleep(0.25)
    compute.release.clear()  # the refresh hangs until released
    started = time.monotonic()
    stale = [cache.get(None, 7, None) for _ in range(5)]  # type: ignore[arg-type]
    assert time.monotonic() - started < 0.5, "no request waits for the refresh"
    assert all(s["number"] == 1 and s["age_s"] >= 0.2 for s in stale)
    deadline = time.monotonic() + 5
    while compute.calls < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert compute.calls == 2 and cache.refreshing(7), "one refresh for five requests"
    compute.release.set()
    while cache.refreshing(7) and time.monotonic() < deadline:
        time.sleep(0.01)
    fresh = cache.get(None, 7, None)  # type: ignore[arg-type]
    assert fresh["number"] == 2 and fresh["age_s"] < 0.2 and compute.calls == 2


def test_cache_computes_a_project_once_for_concurrent_first_requests() -> None:
    compute = SlowStats()
    compute.release.clear()
    cache = StatsCache(ttl=60, compute=compute)
    answers: list[dict] = []
    threads = [threading.Thread(target=lambda: answers.append(cache.get(None, 3, [GHOST])))
               for _ in range(4)]  # type: ignore[arg-type]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    compute.release.set()
    for thread in threads:
        thread.join(10)
    assert compute.calls == 1 and [a["number"] for a in answers] == [1] * 4
    assert cache.get(None, 3, None)["number"] == 2, "another labeler list: other numbers"  # type: ignore


def test_a_slow_first_computation_answers_pending_and_lands_in_the_background() -> None:
    compute = SlowStats()
    compute.release.clear()  # a labeled walk of minutes
    cache = StatsCache(ttl=60, compute=compute, first_wait=0.3)
    started = time.monotonic()
    first = cache.get(None, 5, None)  # type: ignore[arg-type]
    assert 0.3 <= time.monotonic() - started < 2, "the request waits first_wait, no longer"
    assert first["pending"] is True and first["pending_s"] >= 0.3
    again = cache.get(None, 5, None)  # type: ignore[arg-type]
    assert again["pending"] is True and compute.calls == 1, "one computation, not one each"
    assert cache.refreshing(5)
    compute.release.set()
    deadline = time.monotonic() + 5
    while cache.refreshing(5) and time.monotonic() < deadline:
        time.sleep(0.01)
    done = cache.get(None, 5, None)  # type: ignore[arg-type]
    assert done["number"] == 1 and "pending" not in done and compute.calls == 1


def test_a_failed_first_computation_says_why_and_the_next_request_tries_again() -> None:
    from backend.core.errors import LabelStudioError

    calls = []

    def compute(api: Any, project: int, labelers: list[str] | None) -> dict[str, Any]:
        calls.append(project)
        if len(calls) == 1:
            raise LabelStudioError("Label Studio at http://ls.invalid is unreachable")
        return {"number": len(calls)}

    cache = StatsCache(ttl=60, compute=compute, first_wait=5)
    with pytest.raises(LabelStudioError, match="unreachable"):
        cache.get(None, 9, None)  # type: ignore[arg-type]
    assert cache.get(None, 9, None)["number"] == 2 and len(calls) == 2  # type: ignore


def test_the_dashboard_page_says_the_numbers_are_coming_while_they_are_computed() -> None:
    from backend.http.app import create_app

    app = create_app(make_settings())
    status = {"title": "seed", "tasks": 118000, "labeled": 117000, "champion": None,
              "next_training_at_labeled": 117100,
              "jobs": {"running": [], "queued": [], "failed": []}}
    page = app.jinja_env.get_template("dashboard.html").render(
        project=3, ls_url="http://ls", status=status,
        stats={"pending": True, "pending_s": 12.4}, versions=[], review=None,
        assignment=None, jobs_error=None, curve="", cache_s=30)
    assert "labeling numbers being computed (12 s so far" in page
    assert "Tasks, pre-label boxes and labelers: being computed." in page
    assert 'data-stat="acceptance">–<' in page and 'data-stat="accepted"' not in page
    assert "<h2>Labelers</h2>" not in page and "<h2>Models</h2>" in page
