"""Scale benchmark (issue 16): how long `/status` and `/dashboard` take on a large project.

`measure(url, token, project, repeats)` times, against a running Label Studio:

- `status`: `project_status` (the project record and the count of tasks holding the
  champion's pre-labels; no Redis);
- `stats_fresh`: `project_stats` computed from scratch (what the first `/dashboard` of a
  project, and each background refresh, costs);
- `stats_cached`: `StatsCache.get` once the numbers are there (what every later `/dashboard`
  request costs, stale or not);
- `dashboard_cached`: `status` + `stats_cached`, the Label Studio part of a `/dashboard`,
  and `dashboard_while_refreshing`: the same while a background refresh keeps Label Studio
  busy;
- each read they are made of on its own (`project_record`, `count_unlabeled`,
  `count_unlabeled_prelabeled`, `count_champion_prelabels`, `open_batches`, `labeled_walk`);
- before this change: `task_walk_before` (the walk over every task, 1,000 a page),
  `stats_fresh_before` (users, that walk and the labeled walk: the old dashboard's reads) and
  `count_champion_prelabels_before` (the old, wrong, filter with the version as a string).

Each as p50/p95 seconds over `repeats` runs. Run as a script, it builds a project in a fresh
Label Studio (`--tasks`, default 20,000, imported 5,000 a call; the first `--labeled` with
annotations, a third of the others with a pre-label of the champion, `--assigned` of them in
labelers' batches) and prints the JSON.

    python benchmarks/status_scale.py [--tasks 20000] [--labeled 1000] [--assigned 200]
        [--repeats 10] [--no-walks] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.core.settings import Settings  # noqa: E402
from backend.jobs.status import project_status  # noqa: E402
from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth  # noqa: E402
from backend.tools.assign import FIELD, encode  # noqa: E402
from backend.tools.dashboard import (  # noqa: E402
    PRELABELED,
    UNLABELED,
    StatsCache,
    open_batches,
    project_stats,
)
from backend.tools.provenance import labeled_tasks  # noqa: E402
from benchmarks.export import tasks as annotated_tasks  # noqa: E402
from benchmarks.report import emit, machine  # noqa: E402

IMPORT_BATCH = 5000
CHAMPION = "status-scale-v1"
LABELERS = ["a@example.com", "b@example.com"]


class _Champion:
    """The registry's answers project_status reads: one champion, no review."""

    def __init__(self, version: str | None) -> None:
        self.version = version

    def champion(self, project: int) -> dict[str, Any] | None:
        return {"version": self.version, "status": "champion"} if self.version else None

    def versions(self, project: int) -> list[dict[str, Any]]:
        champion = self.champion(project)
        return [champion] if champion else []

    def review(self, project: int) -> None:
        return None


def _timed(work: Callable[[], object], repeats: int) -> dict[str, float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    p95 = seconds[min(len(seconds) - 1, round(0.95 * (len(seconds) - 1)))]
    return {"p50": round(statistics.median(seconds), 3), "p95": round(p95, 3),
            "runs": len(seconds)}


def _task_walk_before(api: LabelStudioAPI, project: int) -> int:
    seen, after = 0, 0
    while page := api.task_page(project, after, 1000):
        seen += len(page)
        after = int(page[-1]["id"])
    return seen


def _stats_before(api: LabelStudioAPI, project: int) -> int:
    """The reads of the dashboard before issue 16: users, every task, the labeled tasks."""
    api.users()
    return _task_walk_before(api, project) + sum(1 for _ in labeled_tasks(api, project, 100))


def _count_before(api: LabelStudioAPI, project: int, version: str) -> int:
    """count_tasks_with_prediction before issue 16 (the version as a bare string)."""
    return api.count_tasks(project, [{"filter": "filter:tasks:predictions_model_versions",
                                      "operator": "contains", "type": "List",
                                      "value": version}])


def measure(url: str, token: str, project: int, repeats: int = 10,
            champion: str | None = None, labelers: list[str] | None = None,
            walks: bool = True) -> dict[str, Any]:
    """p50/p95 seconds of /status's and /dashboard's Label Studio reads on `project`; the
    champion is the project's `model_version` unless given; without `walks`, the reads that
    take seconds to minutes (fresh stats, the labeled walk, the reads before) are left out."""
    api = LabelStudioAPI(LabelStudioAuth(url, token), timeout=600)
    record = api.project(project)
    champion = champion or record.get("model_version") or None
    registry = _Champion(champion)
    settings = Settings.from_env({"LABEL_STUDIO_URL": url, "LABEL_STUDIO_API_KEY": token})
    users = {u.get("id"): str(u.get("email") or u.get("id")) for u in api.users()}
    # fresh all along: what a request costs between refreshes (the first waits it out)
    cache = StatsCache(ttl=3600, first_wait=None)

    def status() -> object:
        return project_status(project, settings, api, registry, None)  # type: ignore[arg-type]

    started = time.perf_counter()
    cache.get(api, project, labelers)
    result: dict[str, Any] = {
        "project": project, "tasks": int(record.get("task_number") or 0), "champion": champion,
        "stats_first_seconds": round(time.perf_counter() - started, 3),
        "status": _timed(status, repeats),
        "stats_cached": _timed(lambda: cache.get(api, project, labelers), repeats),
        "dashboard_cached": _timed(lambda: (status(), cache.get(api, project, labelers)),
                                   repeats),
        "project_record": _timed(lambda: api.project(project), repeats),
        "count_unlabeled": _timed(lambda: api.count_tasks(project, [UNLABELED]), repeats),
        "count_unlabeled_prelabeled": _timed(
            lambda: api.count_tasks(project, [UNLABELED, PRELABELED]), repeats),
        "open_batches": _timed(lambda: open_batches(api, project, users), repeats),
    }
    if champion:
        result["count_champion_prelabels"] = _timed(
            lambda: api.count_tasks_with_prediction(project, champion), repeats)
        result["count_champion_prelabels_before"] = _timed(
            lambda: _count_before(api, project, champion), repeats)
    cache.ttl = 0  # stale all along: every request finds a background refresh running
    result["dashboard_while_refreshing"] = _timed(
        lambda: (status(), cache.get(api, project, labelers)), repeats)
    while cache.refreshing(project):
        time.sleep(0.1)
    if not walks:
        return result
    few = max(1, repeats // 3)
    result["stats_fresh"] = _timed(lambda: project_stats(api, project, labelers), few)
    result["labeled_walk"] = _timed(lambda: sum(1 for _ in labeled_tasks(api, project, 100)),
                                    few)
    result["task_walk_before"] = _timed(lambda: _task_walk_before(api, project), few)
    result["stats_fresh_before"] = _timed(lambda: _stats_before(api, project), few)
    return result


def build(url: str, token: str, total: int, labeled: int, assigned: int) -> int:
    """A project of `total` tasks: the first `labeled` annotated, a third of the rest with a
    pre-label of CHAMPION (the project's model version), the next `assigned` in batches."""
    from tests.labels import CONFIG

    headers = {"Authorization": f"Token {token}"}
    project = int(requests.post(f"{url}/api/projects", headers=headers, timeout=60,
                                json={"title": f"status scale {total}", "label_config": CONFIG,
                                      "model_version": CHAMPION}).json()["id"])
    for start in range(0, total, IMPORT_BATCH):
        count = min(IMPORT_BATCH, total - start)
        batch = annotated_tasks(max(0, min(count, labeled - start)), 3, start)
        for n in range(start + len(batch), start + count):
            task: dict = {"data": {"image": f"https://img.example.com/{n}.jpg"}}
            if n < labeled + assigned:
                task["data"][FIELD] = encode([LABELERS[n % len(LABELERS)]])
            if n % 3 == 0:
                task["predictions"] = [{"model_version": CHAMPION, "score": 0.5, "result": []}]
            batch.append(task)
        requests.post(f"{url}/api/projects/{project}/import", headers=headers, timeout=3600,
                      json=batch).raise_for_status()
    return project


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--labeled", type=int, default=1000)
    parser.add_argument("--assigned", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-walks", action="store_true",
                        help="leave out the reads that take seconds to minutes")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from tests.labelstudio import ADMIN_TOKEN, start_label_studio

    report: dict[str, Any] = {"machine": machine(), "labeled": args.labeled,
                              "assigned": args.assigned}
    with tempfile.TemporaryDirectory() as tmp:
        ls = start_label_studio(Path(tmp))
        try:
            started = time.perf_counter()
            project = build(ls.url, ADMIN_TOKEN, args.tasks, args.labeled, args.assigned)
            report["build_seconds"] = round(time.perf_counter() - started, 1)
            report.update(measure(ls.url, ADMIN_TOKEN, project, args.repeats,
                                  labelers=LABELERS, walks=not args.no_walks))
        finally:
            ls.stop()
    emit(report, args.out)


if __name__ == "__main__":
    main()
