"""Reading one task's `data` in a project of 20,000 tasks, three ways, in one run against one
fresh Label Studio (median milliseconds over 20 tasks spread over the project):

- `get_task_ms`: `GET /api/tasks/<id>`, the read `task_data` used before (which makes Label
  Studio ask the ML backend for a prediction of a task without one);
- `list_greater_ms`: the task list from the id on, one task a page;
- `task_data_ms`: `task_data` now, the task list filtered by the exact id.

    python benchmarks/task_data_read.py [--tasks 20000] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests
from label_studio_sdk import LabelStudio

from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth
from benchmarks.report import emit
from tests.labels import CONFIG
from tests.labelstudio import ADMIN_TOKEN, start_label_studio


def median_ms(read: Callable[[int], object], sample: list[int]) -> float:
    seconds = []
    for task_id in sample:
        started = time.perf_counter()
        read(task_id)
        seconds.append(time.perf_counter() - started)
    return round(statistics.median(seconds) * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    server = start_label_studio(Path(tempfile.mkdtemp(prefix="task-data-read-")))
    try:
        api = LabelStudioAPI(LabelStudioAuth(server.url, ADMIN_TOKEN), timeout=600)
        headers = {"Authorization": f"Token {ADMIN_TOKEN}"}
        project = LabelStudio(base_url=server.url, api_key=ADMIN_TOKEN).projects.create(
            title="task data reads", label_config=CONFIG).id
        ids: list[int] = []
        for start in range(0, args.tasks, 5000):
            ids += api.import_tasks(project, [
                {"data": {"image": f"http://images.invalid/{i}.png"}}
                for i in range(start, min(start + 5000, args.tasks))]) or []
        sample = ids[::max(1, len(ids) // 20)][:20]

        def get_task(task_id: int) -> None:
            requests.get(f"{server.url}/api/tasks/{task_id}", headers=headers, timeout=600,
                         params={"resolve_uri": "false"}).raise_for_status()

        result = {
            "tasks": len(ids), "reads": len(sample),
            "get_task_ms": median_ms(get_task, sample),
            "list_greater_ms": median_ms(lambda t: api._task_walk(
                project, t - 1, 1, unlabeled_only=False, full=False), sample),
            "task_data_ms": median_ms(lambda t: api.task_data(project, t), sample)}
    finally:
        server.stop()
    emit(result, args.out)


if __name__ == "__main__":
    main()
