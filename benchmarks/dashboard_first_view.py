"""The dashboard's first request on a project with many labeled tasks, before and after the
bounded first wait, in one run against one fresh Label Studio (2 cores here).

- `first_request_before_s`: `StatsCache(first_wait=None).get`, which waits for the whole
  labeled walk (what every first `/dashboard` of a project did before);
- `first_request_now_s` and `first_answer_pending`: `StatsCache().get`, which waits at most
  `FIRST_WAIT_S` and then answers that the numbers are coming;
- `numbers_ready_after_s`: when the background computation landed, from that request;
- `next_request_s`: the request after that (served from the cache).

    python benchmarks/dashboard_first_view.py [--labeled 4000] [--out FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from label_studio_sdk import LabelStudio

from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth
from backend.tools.dashboard import FIRST_WAIT_S, StatsCache
from benchmarks.export import tasks
from benchmarks.report import emit
from tests.labels import CONFIG
from tests.labelstudio import ADMIN_TOKEN, start_label_studio


def measure(api: LabelStudioAPI, project: int, labeled: int) -> dict[str, Any]:
    started = time.perf_counter()
    StatsCache(first_wait=None).get(api, project, None)
    before = time.perf_counter() - started
    cache = StatsCache()
    started = time.perf_counter()
    first = cache.get(api, project, None)
    first_s = time.perf_counter() - started
    while cache.refreshing(project):
        time.sleep(0.2)
    ready_s = time.perf_counter() - started
    started = time.perf_counter()
    later = cache.get(api, project, None)
    return {"labeled_tasks": labeled, "first_wait_s": FIRST_WAIT_S,
            "first_request_before_s": round(before, 2),
            "first_request_now_s": round(first_s, 2),
            "first_answer_pending": bool(first.get("pending")),
            "numbers_ready_after_s": round(ready_s, 2),
            "next_request_s": round(time.perf_counter() - started, 4),
            "labeled_counted": later["tasks"]["labeled_from_scratch"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labeled", type=int, default=4000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    server = start_label_studio(Path(tempfile.mkdtemp(prefix="dashboard-first-view-")))
    try:
        api = LabelStudioAPI(LabelStudioAuth(server.url, ADMIN_TOKEN), timeout=600)
        project = LabelStudio(base_url=server.url, api_key=ADMIN_TOKEN).projects.create(
            title="dashboard first view", label_config=CONFIG).id
        for start in range(0, args.labeled, 1000):
            api.import_tasks(project, tasks(min(1000, args.labeled - start), 3, start))
        result = measure(api, project, args.labeled)
    finally:
        server.stop()
    emit(result, args.out)


if __name__ == "__main__":
    main()
