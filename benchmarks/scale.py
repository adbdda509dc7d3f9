"""Scale benchmark (part of issue 16): the reads the loop makes of a large project, at the
seed's size against a small project with the same labels, in one Label Studio and one run.

Two projects in a real Label Studio 1.23.2: a small one (`--small` tasks) and a large one
(`--tasks`, the seed's 118,000 by default), each with the same `--labeled` annotated tasks
(`--boxes-per-task` boxes, image sizes stored as the editor does, so no image is fetched).
Then `--new` tasks are imported into each, as a TASKS_CREATED batch. Each operation runs in a
process of its own that reports seconds and peak RSS:

- `project`: the project record with its counts (what `/status`, `/dashboard` and the
  reconciliation tick read per project);
- `dataset_export`: the training round's and the review's labeled-task read today (one
  synchronous export);
- `dataset_walk`: the same tasks by keyset pages of 100 (what the COCO export and the
  dashboard use);
- `new_tasks_per_task`: the TASKS_CREATED read before this benchmark (one GET per task), and
  `new_tasks_pages`: `task_pages_by_id` (a keyset walk over runs of nearby ids);
- `export_coco`: `mlassist export-coco` of the project.

Prints JSON with each operation at both sizes and the large/small ratio.

    python benchmarks/scale.py [--tasks 118000] [--small 2000] [--labeled 2000]
        [--new 5000] [--boxes-per-task 7] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth  # noqa: E402
from benchmarks.export import tasks as labeled_tasks  # noqa: E402
from benchmarks.report import emit, machine  # noqa: E402
from tests.labels import CONFIG  # noqa: E402
from tests.labelstudio import ADMIN_TOKEN, start_label_studio  # noqa: E402

IMPORT_BATCH = 5000
OPERATIONS = ("project", "dataset_export", "dataset_walk", "new_tasks_per_task",
              "new_tasks_pages", "export_coco")


def run_operation(name: str, url: str, project: int, new_ids: list[int], out: Path) -> int:
    """One operation (in this process); returns how many items it read."""
    api = LabelStudioAPI(LabelStudioAuth(url, ADMIN_TOKEN), timeout=3600)
    if name == "project":
        return int(api.project(project).get("num_tasks_with_annotations") or 0)
    if name == "dataset_export":
        return len(api.labeled_tasks(project))
    if name == "dataset_walk":
        from backend.tools.provenance import labeled_tasks

        return sum(1 for _ in labeled_tasks(api, project, 100))
    if name == "new_tasks_per_task":
        return sum(1 for task_id in new_ids
                   if isinstance(api._call("GET", f"/api/tasks/{task_id}",
                                           params={"resolve_uri": "false"}), dict))
    if name == "new_tasks_pages":
        return sum(len(page) for page in api.task_pages_by_id(project, new_ids))
    if name == "export_coco":
        from backend.cli import main

        os.environ.update(LABEL_STUDIO_URL=url, LABEL_STUDIO_API_KEY=ADMIN_TOKEN,
                          LOG_LEVEL="warning")
        code = main(["export-coco", "--project", str(project), "-o", str(out)])
        if code:
            raise SystemExit(f"export-coco exited {code}")
        return len(json.loads(out.read_text())["annotations"])
    raise SystemExit(f"unknown operation {name}")


def measured(name: str, url: str, project: int, new_ids: list[int], work: Path) -> dict:
    """Seconds and peak RSS of one operation, in a fresh process."""
    ids_file = work / "new-ids.json"
    ids_file.write_text(json.dumps(new_ids))
    done = subprocess.run([sys.executable, __file__, "--operation", name, "--url", url,
                           "--project", str(project), "--ids", str(ids_file),
                           "--work", str(work)], capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def build(url: str, title: str, total: int, labeled: int, boxes: int) -> int:
    """A project of `total` tasks, the first `labeled` of them annotated."""
    headers = {"Authorization": f"Token {ADMIN_TOKEN}"}
    project = requests.post(f"{url}/api/projects", headers=headers, timeout=60,
                            json={"title": title, "label_config": CONFIG}).json()["id"]
    for start in range(0, total, IMPORT_BATCH):
        count = min(IMPORT_BATCH, total - start)
        batch = labeled_tasks(max(0, min(count, labeled - start)), boxes, start)
        batch += [{"data": {"image": f"https://img.example.com/{n}.jpg"}}
                  for n in range(start + len(batch), start + count)]
        requests.post(f"{url}/api/projects/{project}/import", headers=headers, timeout=3600,
                      json=batch).raise_for_status()
    return int(project)


def import_new(url: str, project: int, count: int) -> tuple[list[int], float]:
    """A TASKS_CREATED batch: (the new ids, seconds the import took)."""
    headers = {"Authorization": f"Token {ADMIN_TOKEN}"}
    started = time.perf_counter()
    answer = requests.post(f"{url}/api/projects/{project}/import", headers=headers,
                           params={"return_task_ids": "true"}, timeout=3600,
                           json=[{"data": {"image": f"https://img.example.com/new-{n}.jpg"}}
                                 for n in range(count)])
    answer.raise_for_status()
    return list(answer.json()["task_ids"]), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=118_000)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--labeled", type=int, default=2000)
    parser.add_argument("--new", type=int, default=5000)
    parser.add_argument("--boxes-per-task", type=int, default=7)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--operation", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--project", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ids", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.operation:
        started = time.perf_counter()
        count = run_operation(args.operation, args.url, args.project,
                              json.loads(args.ids.read_text()), args.work / "coco.json")
        print(json.dumps({"seconds": round(time.perf_counter() - started, 2), "items": count,
                          "peak_rss_mb": round(resource.getrusage(
                              resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
        return
    report: dict = {"machine": machine(), "labeled": args.labeled,
                    "boxes_per_task": args.boxes_per_task, "new_tasks": args.new, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ls = start_label_studio(work)
        try:
            for size in (args.small, args.tasks):
                started = time.perf_counter()
                project = build(ls.url, f"scale {size}", size, min(args.labeled, size),
                                args.boxes_per_task)
                entry: dict = {"build_seconds": round(time.perf_counter() - started, 1)}
                new_ids, seconds = import_new(ls.url, project, args.new)
                entry["new_import_seconds"] = round(seconds, 1)
                for name in OPERATIONS:
                    entry[name] = measured(name, ls.url, project, new_ids, work)
                    print(f"{size} tasks: {name} {entry[name]}", file=sys.stderr)
                report["sizes"][str(size)] = entry
        finally:
            ls.stop()
    small, large = (report["sizes"][str(n)] for n in (args.small, args.tasks))
    report["large_over_small"] = {name: {"seconds": round(large[name]["seconds"]
                                                          / max(small[name]["seconds"], 1e-3), 2),
                                         "peak_rss": round(large[name]["peak_rss_mb"]
                                                           / small[name]["peak_rss_mb"], 2)}
                                  for name in OPERATIONS}
    emit(report, args.out)


if __name__ == "__main__":
    main()
