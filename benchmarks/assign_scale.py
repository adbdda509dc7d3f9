"""Assignment top-up at scale (part of issue 16): what `mlassist assign` and the worker's
top-up after every annotation cost in a large project.

`assign_top_up(url, token, project, emails, batch)` runs one top-up and returns its seconds and
HTTP requests (counted at the adapter: every request `LabelStudioAPI` sends), for
`benchmarks/scale.py` to call on its projects.

Run as a script, it builds a `--tasks` project (20,000 by default) in a real Label Studio
1.23.2 with `--labelers` users, and measures the first top-up (every labeler gets `--batch`
tasks) and the top-up after one annotation, with today's top-up and with the one before
issue 16 (every task walked, a GET and a PATCH per changed task), each on a fresh project.
Prints JSON.

    python benchmarks/assign_scale.py [--tasks 20000] [--labelers 3] [--batch 75] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth  # noqa: E402
from backend.tools import assign  # noqa: E402
from benchmarks.report import emit, machine  # noqa: E402
from tests.labels import CONFIG  # noqa: E402
from tests.labelstudio import ADMIN_TOKEN, start_label_studio  # noqa: E402

IMPORT_BATCH = 5000


class CountingAPI(LabelStudioAPI):
    """The adapter, counting the HTTP requests it sends."""

    requests = 0

    def _call(self, method: str, path: str, params: dict[str, str] | None = None,
              body: object = None, files: list | None = None) -> object:
        self.requests += 1
        return super()._call(method, path, params=params, body=body, files=files)


def _before_issue_16(api: LabelStudioAPI, project: int, emails: list[str], batch: int,
                     overlap: int = 1) -> dict[str, Any]:
    """The top-up as it was: every task walked, the plan over all, a GET + PATCH per change."""
    users = {str(u.get("email", "")).lower(): (str(u.get("email")), int(u["id"]))
             for u in api.users() if isinstance(u.get("id"), int)}
    labelers = dict(users[e.lower()] for e in emails)
    tasks, after = [], 0
    while page := api.task_page(project, after, 1000):
        tasks += [assign.task_state(task) for task in page]
        after = int(page[-1]["id"])
    result = assign.plan(tasks, labelers, batch, overlap)
    for task_id, assignees in result.changes.items():
        api.update_task(task_id, data={**api.task_data(project, task_id),
                                       assign.FIELD: assign.encode(assignees)})
    api.views(project)
    return {"changed_tasks": len(result.changes), "open": result.open_tasks}


def assign_top_up(url: str, token: str, project: int, emails: list[str], batch: int,
                  top_up: Callable[..., dict[str, Any]] = assign.top_up) -> dict[str, Any]:
    """One top-up of `project` for `emails`: seconds, HTTP requests, tasks changed."""
    api = CountingAPI(LabelStudioAuth(url, token), timeout=3600)
    started = time.perf_counter()
    done = top_up(api, project, emails, batch)
    return {"seconds": round(time.perf_counter() - started, 2), "requests": api.requests,
            "changed_tasks": done["changed_tasks"]}


def post(url: str, path: str, body: object) -> Any:
    response = requests.post(f"{url}{path}", headers={"Authorization": f"Token {ADMIN_TOKEN}"},
                             json=body, timeout=3600)
    response.raise_for_status()
    return response.json()


def build(url: str, title: str, tasks: int) -> int:
    """A project of `tasks` unlabeled image tasks."""
    api = LabelStudioAPI(LabelStudioAuth(url, ADMIN_TOKEN), timeout=3600)
    project = int(post(url, "/api/projects", {"title": title, "label_config": CONFIG})["id"])
    for start in range(0, tasks, IMPORT_BATCH):
        api.import_tasks(project, [{"image": f"https://img.example.com/{i}.jpg"}
                                   for i in range(start, min(tasks, start + IMPORT_BATCH))])
    return project


def measure(url: str, tasks: int, emails: list[str], batch: int,
            top_up: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The first top-up of a fresh project, then the top-up after one annotation."""
    project = build(url, f"assign {tasks}", tasks)
    first = assign_top_up(url, ADMIN_TOKEN, project, emails, batch, top_up)
    api = LabelStudioAPI(LabelStudioAuth(url, ADMIN_TOKEN))
    held = api.task_page(project, 0, 1, where=[assign.ASSIGNED])
    post(url, f"/api/tasks/{held[0]['id']}/annotations", {"result": []})
    again = assign_top_up(url, ADMIN_TOKEN, project, emails, batch, top_up)
    return {"first_top_up": first, "after_one_annotation": again}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--labelers", type=int, default=3)
    parser.add_argument("--batch", type=int, default=75)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": machine(), "tasks": args.tasks,
                              "labelers": args.labelers, "batch": args.batch}
    with tempfile.TemporaryDirectory() as tmp:
        ls = start_label_studio(Path(tmp))
        try:
            emails = [f"labeler{i}@example.com" for i in range(args.labelers)]
            for email in emails:
                post(ls.url, "/api/users", {"email": email, "username": email.split("@")[0]})
            for name, top_up in (("before", _before_issue_16), ("after", assign.top_up)):
                report[name] = measure(ls.url, args.tasks, emails, args.batch, top_up)
                print(f"{name}: {report[name]}", file=sys.stderr)
        finally:
            ls.stop()
    emit(report, args.out)


if __name__ == "__main__":
    main()
