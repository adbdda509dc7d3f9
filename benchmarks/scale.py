"""Scale benchmark (issue 16): the whole loop on a project of the seed's size against the same
operations on a small project with the same labels, in one Label Studio and one run.

Two projects in a real Label Studio 1.23.2 with a real Redis: a small one (`--small` tasks, by
default 2,000 labeled + 2,000 backlog) and a large one (`--tasks`, the seed's 118,000), each with
the same `--labeled` annotated tasks (`--boxes-per-task` boxes, image sizes stored as the
editor does). Every task's data is what the sync writes for its blob, so the sync's own code
reads them back as its tasks; images (generated 640x480 JPEGs, `DISTINCT_IMAGES` of them under
many names) come from a loopback server. An untrained SSDlite320 is each project's champion
(ONNX Runtime, the push-back's real forward). Each operation runs in a process of its own that
reports seconds and peak RSS (scale_ops.py, scale_pushback.py):

project record; sync restart (read-back) and a pass with nothing new; one reconciliation tick;
`/status` and `/dashboard` (p50/p95 over repeats, the dashboard also uncached); the training
round's dataset read; `export-coco`; `assign` (first split of 3 labelers x 50, then a top-up);
the bare forward over the window's images (the ceiling) and the push-back over the last
`--window` backlog tasks; a `--new`-task import and its TASKS_CREATED job; then the
correctness checks (each backlog task of the window and each new task holds exactly one
prediction of the champion's version, nothing else does, every labeled task is in the training
read; with `--full-pushback` after a push-back over every unlabeled task left, its model
replaced by a stand-in that answers at once); and last what each way of storing predictions
costs per call at that size.

Label Studio runs as it ships (its bulk prediction import recounts every task of the project on
each call); `--fast-prediction-import` starts it with the feature flag that makes an import
recount only the tasks it touches, as MLAssist's own stacks do (backend/demo/localstack.py).

    python benchmarks/scale.py [--tasks 118000] [--small 4000] [--labeled 2000] [--window 2000]
        [--new 5000] [--fast-prediction-import] [--full-pushback] [--only op,op] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth  # noqa: E402
from benchmarks.export import tasks as labeled_tasks  # noqa: E402
from benchmarks.report import emit, machine, stop_cleanly_on_sigterm  # noqa: E402
from benchmarks.scale_ops import PROBE_VERSION, Spec, run, sync_data  # noqa: E402
from tests.labels import CONFIG  # noqa: E402
from tests.labelstudio import ADMIN_TOKEN, start_label_studio  # noqa: E402
from tests.redis_server import RedisServer, redis_binary  # noqa: E402

IMPORT_BATCH = 5000
BEFORE_NEW = ("project", "sync_restart", "sync_pass", "reconcile", "status", "dashboard",
              "export_coco", "assign", "list_cost", "forward", "pushback")
LABELERS = [f"labeler{n}@example.com" for n in range(3)]


def peak_rss_mb() -> float:
    """This process's peak resident memory. Not getrusage's ru_maxrss: Linux carries that
    over exec from the parent (which has torch loaded); VmHWM belongs to this image alone."""
    status = Path("/proc/self/status").read_text()
    found = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return round(int(found.split()[1]) / 1024, 1)


def measured(name: str, spec: Spec) -> dict:
    """Seconds and peak RSS of one operation, in a fresh process."""
    path = spec.save(Path(spec.work) / f"spec-{spec.project}.json")
    done = subprocess.run([sys.executable, __file__, "--operation", name, "--spec", str(path)],
                          capture_output=True, text=True, timeout=7200)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def build(api: LabelStudioAPI, url: str, images: str, title: str, total: int, labeled: int,
          boxes: int) -> tuple[int, list[int]]:
    """A project of `total` tasks, the first `labeled` annotated: (project, labeled ids)."""
    headers = {"Authorization": f"Token {ADMIN_TOKEN}"}
    project = requests.post(f"{url}/api/projects", headers=headers, timeout=60,
                            json={"title": title, "label_config": CONFIG}).json()["id"]
    labeled_ids: list[int] = []
    for start in range(0, total, IMPORT_BATCH):
        count = min(IMPORT_BATCH, total - start)
        with_labels = max(0, min(count, labeled - start))
        batch = [{"data": sync_data(images, n), "annotations": made["annotations"]}
                 for n, made in zip(range(start, start + with_labels),
                                    labeled_tasks(with_labels, boxes, start), strict=True)]
        batch += [{"data": sync_data(images, n)}
                  for n in range(start + with_labels, start + count)]
        answer = requests.post(f"{url}/api/projects/{project}/import", headers=headers,
                               params={"return_task_ids": "true"}, timeout=3600, json=batch)
        answer.raise_for_status()
        labeled_ids += answer.json()["task_ids"][:with_labels]
    return int(project), labeled_ids


def import_new(url: str, project: int, images: str, count: int, first: int) -> list[int]:
    """A TASKS_CREATED batch of blobs after the seed's: the new ids."""
    answer = requests.post(f"{url}/api/projects/{project}/import",
                           headers={"Authorization": f"Token {ADMIN_TOKEN}"},
                           params={"return_task_ids": "true"}, timeout=3600,
                           json=[{"data": sync_data(images, n)}
                                 for n in range(first, first + count)])
    answer.raise_for_status()
    return list(answer.json()["task_ids"])


def checks(api: LabelStudioAPI, spec: Spec, version: str, expected: int,
           labeled: int, dataset_items: int) -> dict:
    """Exactly one champion prediction on each task that should have one, none elsewhere."""
    record = api.project(spec.project)
    holding = api.count_tasks_with_prediction(spec.project, version)
    total_predictions = int(record.get("total_predictions_number") or 0)
    return {"tasks_with_champion_prediction": holding, "expected": expected,
            "predictions_in_project": total_predictions,
            "duplicates": total_predictions - (holding or 0),
            "labeled": labeled, "in_training_read": dataset_items,
            "ok": holding == expected == total_predictions and dataset_items == labeled}


def one_size(args: argparse.Namespace, api: LabelStudioAPI, base: Spec, registry: Any,
             checkpoint: Path, size: int) -> dict:
    from benchmarks.loop import register_champion

    started = time.perf_counter()
    project, labeled_ids = build(api, base.url, base.images, f"scale {size}", size,
                                 min(args.labeled, size), args.boxes_per_task)
    version = register_champion(registry, project, checkpoint)
    spec = Spec(**{**base.__dict__, "project": project, "tasks": size,
                   "labeled_ids": labeled_ids})
    entry: dict = {"build_seconds": round(time.perf_counter() - started, 1)}
    wanted = set(args.only.split(",")) if args.only else None
    for name in BEFORE_NEW:
        if wanted is None or name in wanted:
            entry[name] = measured(name, spec)
            print(f"{size} tasks: {name} {entry[name]}", file=sys.stderr)
    started = time.perf_counter()
    spec.new_ids = import_new(base.url, project, base.images, args.new, size)
    entry["new_import_seconds"] = round(time.perf_counter() - started, 1)
    for name in ("new_tasks", "dataset"):
        if wanted is None or name in wanted or name == "dataset":
            entry[name] = measured(name, spec)
            print(f"{size} tasks: {name} {entry[name]}", file=sys.stderr)
    expected = entry.get("pushback", {}).get("items", 0) + entry.get("new_tasks", {}).get(
        "items", 0)
    if args.full_pushback:
        entry["pushback_all"] = measured("pushback_all", spec)
        print(f"{size} tasks: pushback_all {entry['pushback_all']}", file=sys.stderr)
        expected = int(api.project(project).get("task_number") or 0) - len(labeled_ids)
    entry["checks"] = checks(api, spec, version, expected, len(labeled_ids),
                             entry["dataset"]["items"])
    print(f"{size} tasks: checks {entry['checks']}", file=sys.stderr)
    if wanted is None or "store_cost" in wanted:
        entry["store_cost"] = measured("store_cost", spec)
        print(f"{size} tasks: store_cost {entry['store_cost']}", file=sys.stderr)
    return entry


def ratios(small: dict, large: dict) -> dict:
    """large / small for each operation's seconds (or p95) and peak RSS."""
    found = {}
    for name, entry in large.items():
        if not isinstance(entry, dict) or name not in small or "seconds" not in entry:
            continue
        key = "p95_s" if "p95_s" in entry else "seconds"
        found[name] = {key: round(entry[key] / max(small[name][key], 1e-3), 2),
                       "peak_rss": round(entry["peak_rss_mb"] / small[name]["peak_rss_mb"], 2)}
        if "tasks_per_s" in entry:
            found[name]["tasks_per_s"] = round(entry["tasks_per_s"]
                                               / max(small[name]["tasks_per_s"], 1e-3), 2)
    return found


def table(report: dict, sizes: list[str]) -> str:
    rows = [f"| operation | {' | '.join(f'{s} tasks' for s in sizes)} |",
            "|---|" + "---|" * len(sizes)]
    names = [n for n, v in report["sizes"][sizes[-1]].items() if isinstance(v, dict)
             and "seconds" in v]
    for name in names:
        cells = []
        for size in sizes:
            entry = report["sizes"][size].get(name) or {}
            time_part = (f"p95 {entry['p95_s']} s" if "p95_s" in entry
                         else f"{entry.get('seconds')} s")
            rate = f", {entry['tasks_per_s']}/s" if "tasks_per_s" in entry else ""
            cells.append(f"{time_part}{rate}, {entry.get('peak_rss_mb')} MB")
        rows.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=118_000)
    parser.add_argument("--small", type=int, default=4000)
    parser.add_argument("--labeled", type=int, default=2000)
    parser.add_argument("--window", type=int, default=2000)
    parser.add_argument("--new", type=int, default=5000)
    parser.add_argument("--boxes-per-task", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--fast-prediction-import", action="store_true")
    parser.add_argument("--full-pushback", action="store_true",
                        help="then push back every unlabeled task left (a stand-in model) and "
                             "check that each holds exactly one champion prediction")
    parser.add_argument("--only", help="comma-separated operations (default: all)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--operation", help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.operation:
        started = time.perf_counter()
        found = run(args.operation, Spec.load(args.spec))
        print(json.dumps({"seconds": round(time.perf_counter() - started, 2), **found,
                          "peak_rss_mb": peak_rss_mb()}))
        return
    # Imported here, not at the top: an operation's process must not pay for torch unless the
    # operation itself needs it (its peak RSS is what is measured).
    from backend.model.registry import LocalStore, Registry
    from benchmarks.loop import image_server
    from tests.services import untrained_checkpoint

    stop_cleanly_on_sigterm()
    from backend.demo.localstack import FAST_PREDICTION_IMPORT_FLAG

    os.environ[FAST_PREDICTION_IMPORT_FLAG] = str(args.fast_prediction_import).lower()
    report: dict = {"machine": machine(), "labeled": args.labeled, "window": args.window,
                    "boxes_per_task": args.boxes_per_task, "new_tasks": args.new,
                    "fast_prediction_import": args.fast_prediction_import, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        binary = redis_binary()
        if binary is None:
            raise SystemExit("redis-server not found (scripts/bootstrap.sh installs it)")
        redis_server = RedisServer(binary, work / "redis")
        ls = start_label_studio(work)
        pictures, images = image_server(work)
        try:
            api = LabelStudioAPI(LabelStudioAuth(ls.url, ADMIN_TOKEN), timeout=3600)
            for email in LABELERS:
                api._call("POST", "/api/users/", body={"email": email,
                                                       "username": email.split("@")[0]})
            registry = Registry(LocalStore(work / "models" / "registry"), work / "cache")
            checkpoint = untrained_checkpoint(work / "m.pt", ["circle", "square", "triangle"])
            base = Spec(url=ls.url, token=ADMIN_TOKEN, project=0, tasks=0,
                        redis_url=redis_server.url, model_dir=str(work / "models"),
                        images=images, work=str(work), labelers=LABELERS,
                        window=args.window, repeats=args.repeats)
            for size in (args.small, args.tasks):
                report["sizes"][str(size)] = one_size(args, api, base, registry, checkpoint,
                                                      size)
        finally:
            pictures.stop()
            ls.stop()
            redis_server.stop()
    sizes = [str(args.small), str(args.tasks)]
    report["large_over_small"] = ratios(*(report["sizes"][s] for s in sizes))
    report["probe_version"] = PROBE_VERSION
    emit(report, args.out)
    print(table(report, sizes), file=sys.stderr)


if __name__ == "__main__":
    main()
