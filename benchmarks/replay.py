"""Replay benchmark: how much drawing does the assistance save a labeler?

A simulated labeler works through a real Label Studio 1.23.2 project task by task, in the
order Label Studio serves them (`/api/projects/ID/next`), while the real loop runs beside it:
webhooks -> `mlassist serve` -> an RQ worker that trains, validates, promotes and pushes
pre-annotations back. For each task the labeler takes the pre-annotation it finds: a predicted
box that matches a ground-truth box (IoU >= 0.5, same class) is accepted as it is, a predicted
box that overlaps a remaining ground-truth box (IoU >= 0.1) is edited onto it, other predicted
boxes are deleted, and ground-truth boxes nobody predicted are drawn. It then submits, marking
each region's origin as Label Studio's editor does, and spends `--seconds-per-task` (a
stand-in for human time) before the next task. With `--pace human` it spends the effort
model's time for what it did on the task whenever a training or pre-label job is queued or
running, and `--seconds-per-task` only while the loop is idle (nothing can change then), so
the labels a round sees are a person's at that speed, without the hours a person takes.

The dataset is a COCO file with its images (`--coco FILE --images DIR`), or by default
generated scenes: the shapes (default) or, with `--scenes realistic`, a realistic set from
benchmarks/realistic (`--preset standard|hard`, `--seed`). Default MLAssist settings (no
COCO weights: the model starts from scratch).
Writes JSON (stdout, and --out) and PNG plots (--plots DIR): champion AP50 against labeled
tasks, boxes accepted / edited / deleted / drawn per task, and the rolling share of
ground-truth boxes that arrived as correct pre-labels, with the moments models appeared.
Label Studio itself asks the backend for predictions of the task it serves next, so the
first tasks carry (empty) predictions of the untrained base model; only trained versions
count as pre-labels in the summary.

    python benchmarks/replay.py [--tasks 300] [--seconds-per-task 2] [--pace fixed|human]
        [--out F] [--plots DIR]
        [--scenes shapes|realistic] [--preset standard|hard] [--seed 0]
        [--arch A] [--weights none|imagenet|coco] [--seconds-draw 7.0 ...]

The summary also estimates labeling time with and without the assistance from seconds per
action (EFFORT_S, with its sources), and the share of correct pre-labels per third.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.demo.localstack import Process, free_port  # noqa: E402
from backend.demo.scenes import make_scene  # noqa: E402
from backend.jobs.queues import PREDICT_QUEUE, TRAINING_QUEUE  # noqa: E402
from backend.labelstudio.boxes import from_region_value, to_region  # noqa: E402
from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth  # noqa: E402
from backend.model.registry import LocalStore, Registry  # noqa: E402
from backend.tools.coco_import import import_coco, read_coco  # noqa: E402
from benchmarks import realistic  # noqa: E402
from benchmarks.replay_plots import plots  # noqa: E402
from benchmarks.replay_summary import (  # noqa: E402
    EFFORT_S,
    pause_seconds,
    summary,
    task_seconds,
)
from benchmarks.report import emit, machine  # noqa: E402
from tests.labelstudio import ADMIN_TOKEN, start_label_studio  # noqa: E402
from tests.redis_server import RedisServer, redis_binary  # noqa: E402
from tests.services import Backend, mlassist_bin  # noqa: E402

MATCH_IOU, EDIT_IOU = 0.5, 0.1
SECRET = "replay-secret"
SETTLE_S = 1.0


def scenes_as_coco(count: int, folder: Path) -> dict[str, Any]:
    """Generated scenes written as JPEG files and a COCO dict (the default dataset)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ["circle", "square", "triangle"]
    coco: dict[str, Any] = {"images": [], "annotations": [],
                            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    for seed in range(count):
        scene = make_scene(10_000 + seed)
        name = f"scene-{10_000 + seed:05d}.jpg"
        scene.image.save(folder / name, quality=92)
        coco["images"].append({"id": seed + 1, "file_name": name, "width": scene.image.width,
                               "height": scene.image.height})
        for (x1, y1, x2, y2), label in zip(scene.boxes, scene.labels, strict=True):
            coco["annotations"].append({"id": len(coco["annotations"]) + 1,
                                        "image_id": seed + 1,
                                        "category_id": names.index(label) + 1,
                                        "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0})
    return coco


def label_config(categories: list[str]) -> str:
    return ('<View><Image name="image" value="$image"/>'
            '<RectangleLabels name="label" toName="image">'
            + "".join(f'<Label value="{name}"/>' for name in categories)
            + "</RectangleLabels></View>")


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * \
        max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def review(predicted: list[dict], truth: list[tuple[tuple[float, ...], str]], width: int,
           height: int) -> tuple[list[dict], dict[str, int]]:
    """What the simulated labeler submits for one task, and what it had to do."""
    boxes = []
    for region in predicted:
        box = from_region_value(region.get("value") or {}, width, height)
        label = ((region.get("value") or {}).get("rectanglelabels") or [None])[0]
        if box is not None and label is not None:
            boxes.append((region, (box.x1, box.y1, box.x2, box.y2), label))
    left = list(range(len(truth)))
    result: list[dict] = []
    counts = {"accepted": 0, "edited": 0, "deleted": 0, "drawn": 0}
    pairs = sorted(((iou(b, truth[t][0]), p, t) for p, (_, b, label) in enumerate(boxes)
                    for t in range(len(truth)) if truth[t][1] == label), reverse=True)
    used: set[int] = set()
    for overlap, p, t in pairs:
        if overlap >= MATCH_IOU and p not in used and t in left:
            used.add(p)
            left.remove(t)
            result.append({**boxes[p][0], "origin": "prediction"})
            counts["accepted"] += 1
    for p, (region, box, _) in enumerate(boxes):
        if p in used:
            continue
        best = max(left, key=lambda t: iou(box, truth[t][0]), default=None)
        if best is not None and iou(box, truth[best][0]) >= EDIT_IOU:
            left.remove(best)
            fixed = to_region(truth[best][0], score=1.0, label=truth[best][1], width=width,
                              height=height, from_name=region["from_name"],
                              to_name=region["to_name"], region_id=region.get("id"))
            if fixed is not None:
                fixed.pop("score")
                result.append({**fixed, "origin": "prediction-changed"})
                counts["edited"] += 1
                continue
        counts["deleted"] += 1
    for t in left:
        drawn = to_region(truth[t][0], score=1.0, label=truth[t][1], width=width, height=height,
                          from_name="label", to_name="image", region_id=f"hand-{t}")
        if drawn is not None:
            drawn.pop("score")
            result.append({**drawn, "origin": "manual"})
            counts["drawn"] += 1
    return result, counts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300, help="generated scenes (default)")
    parser.add_argument("--coco", type=Path, help="a COCO file instead of generated scenes")
    parser.add_argument("--images", type=Path, help="the COCO file's image folder")
    parser.add_argument("--scenes", choices=("shapes", "realistic"), default="shapes",
                        help="which generated scenes, without --coco (default shapes)")
    parser.add_argument("--preset", choices=sorted(realistic.PRESETS), default="standard")
    parser.add_argument("--seed", type=int, default=0, help="the realistic set's seed")
    parser.add_argument("--seconds-per-task", type=float, default=2.0,
                        help="simulated human time per task (default 2)")
    parser.add_argument("--pace", choices=("fixed", "human"), default="fixed",
                        help="fixed: --seconds-per-task for every task (default); human: "
                             "while a training or pre-label job is queued or running, each "
                             "task takes the effort model's time of what was done on it")
    parser.add_argument("--arch", help="MODEL_ARCH (default: MLAssist's default)")
    parser.add_argument("--weights", default="none",
                        help="MODEL_WEIGHTS: none (from scratch, default), imagenet, coco; "
                             "other than none reads the torch cache (TORCH_HOME)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="another MLAssist setting for the backend and worker")
    for action, seconds in EFFORT_S.items():
        parser.add_argument(f"--seconds-{action}", type=float, default=seconds,
                            help=f"effort model: seconds to {action} a box ({seconds:g})")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plots", type=Path)
    return parser.parse_args()


def dataset(args: argparse.Namespace, work: Path,
            report: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """The COCO dataset to replay and its image folder."""
    if args.coco:
        if args.images is None:
            raise SystemExit("--coco needs --images DIR")
        report["dataset"] = str(args.coco)
        return read_coco(args.coco), args.images
    if args.scenes == "realistic":
        coco = realistic.write_dataset(work / "realistic", args.tasks, args.preset, args.seed)
        report["dataset"] = (f"{args.tasks} realistic scenes, preset {args.preset}, "
                             f"seed {args.seed}")
        return coco, work / "realistic" / "images"
    report["dataset"] = f"{args.tasks} generated scenes"
    return scenes_as_coco(args.tasks, work / "scenes"), work / "scenes"


def truth_boxes(coco: dict[str, Any]) -> tuple[dict[str, list], dict[str, tuple[int, int]]]:
    """Ground-truth boxes (xyxy, class name) and image sizes, by file name."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    truth: dict[str, list] = {i["file_name"]: [] for i in coco["images"]}
    sizes = {i["file_name"]: (i["width"], i["height"]) for i in coco["images"]}
    by_id = {i["id"]: i["file_name"] for i in coco["images"]}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        truth[by_id[ann["image_id"]]].append(((x, y, x + w, y + h), names[ann["category_id"]]))
    return truth, sizes


def loop_env(args: argparse.Namespace, work: Path, ls_url: str, redis_url: str,
             port: int) -> dict[str, str]:
    env = {**os.environ, "LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": ADMIN_TOKEN,
           "REDIS_URL": redis_url, "MODEL_DIR": str(work / "models"),
           "IMAGE_CACHE_DIR": str(work / "images"), "WEBHOOK_SECRET": SECRET,
           "PORT": str(port), "BACKEND_PUBLIC_URL": f"http://127.0.0.1:{port}",
           "MODEL_WEIGHTS": args.weights, "DEVICE": "cpu", "LOG_LEVEL": "info"}
    if args.weights == "none":
        env["TORCH_HOME"] = str(work / "torch")  # nothing pretrained can be read
    if args.arch:
        env["MODEL_ARCH"] = args.arch
    env.update(item.split("=", 1) for item in args.env)
    return env


def loop_busy(redis_url: str) -> Callable[[], bool]:
    """Whether a training or pre-label job is queued or running."""
    from redis import Redis
    from rq import Queue
    from rq.registry import StartedJobRegistry

    connection = Redis.from_url(redis_url)
    queues = [Queue(name, connection=connection) for name in (TRAINING_QUEUE, PREDICT_QUEUE)]
    return lambda: any(queue.count or StartedJobRegistry(queue=queue).count
                       for queue in queues)


def label_every_task(args: argparse.Namespace, ls_url: str, project: int, registry: Registry,
                     truth: dict[str, list], sizes: dict[str, tuple[int, int]],
                     started: float, busy: Callable[[], bool]
                     ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The simulated labeler, task by task in Label Studio's order, until none is left."""
    headers = {"Authorization": f"Token {ADMIN_TOKEN}"}
    per_task: list[dict[str, Any]] = []
    clock = 0.0  # the labeler's own time (effort model), for the human pace
    first_prelabel: dict[str, int] = {}
    while True:
        answer = requests.get(f"{ls_url}/api/projects/{project}/next", headers=headers,
                              timeout=60)
        if answer.status_code == 404:
            return per_task, first_prelabel
        answer.raise_for_status()
        task = requests.get(f"{ls_url}/api/tasks/{answer.json()['id']}", headers=headers,
                            timeout=60).json()
        name = task["data"]["mlassist_coco"]
        shown = max((p for p in task.get("predictions") or []),
                    key=lambda p: p.get("created_at") or "", default=None)
        width, height = sizes[name]
        result, counts = review((shown or {}).get("result") or [], truth[name], width, height)
        requests.post(f"{ls_url}/api/tasks/{task['id']}/annotations", headers=headers,
                      timeout=60, json={"result": result,
                                        "parent_prediction": (shown or {}).get("id")}
                      ).raise_for_status()
        champion = registry.champion(project)
        version = (shown or {}).get("model_version")
        if version and version not in first_prelabel:
            first_prelabel[version] = len(per_task) + 1
        per_task.append({"task": task["id"], "truth_boxes": len(truth[name]), **counts,
                         "prelabel_version": version,
                         "champion": champion["version"] if champion else None,
                         "champion_val_ap50": ((champion or {}).get("metrics") or {})
                         .get("ap50"), "t": round(time.monotonic() - started, 1),
                         "labeler_s": round(clock, 1)})
        clock += task_seconds(args, counts)
        # Each submission queues a training check that ends in a fraction of a second when no
        # round is due: only what still runs after SETTLE_S counts as the loop at work.
        time.sleep(SETTLE_S)
        time.sleep(max(pause_seconds(args, counts, busy) - SETTLE_S, 0.0))


def replay(args: argparse.Namespace, report: dict[str, Any],
           started: float) -> tuple[list[dict[str, Any]], dict[str, int], list[dict]]:
    """Label Studio, Redis, the backend and a worker on loopback; the labeler through them."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        coco, images = dataset(args, work, report)
        truth, sizes = truth_boxes(coco)
        binary = redis_binary()
        if binary is None:
            raise SystemExit("redis-server not found (scripts/bootstrap.sh installs it)")
        redis_server = RedisServer(binary, work / "redis")
        ls = start_label_studio(work)
        processes: list[Any] = []
        try:
            categories = [c["name"] for c in coco["categories"]]
            project = requests.post(f"{ls.url}/api/projects", timeout=30,
                                    headers={"Authorization": f"Token {ADMIN_TOKEN}"},
                                    json={"title": "replay",
                                          "label_config": label_config(categories)}).json()["id"]
            api = LabelStudioAPI(LabelStudioAuth(ls.url, ADMIN_TOKEN))
            report["tasks"] = import_coco(api, project, coco, str(images)).tasks_created
            env = loop_env(args, work, ls.url, redis_server.url, free_port())
            processes.append(Backend(env, work / "backend.log").wait())
            processes.append(Process([mlassist_bin(), "worker"], env, work / "worker.log"))
            Process([mlassist_bin(), "connect", "--project", str(project)], env,
                    work / "connect.log").process.wait(60)
            registry = Registry(LocalStore(work / "models" / "registry"), work / "cache")
            per_task, first_prelabel = label_every_task(args, ls.url, project, registry,
                                                        truth, sizes, started,
                                                        loop_busy(redis_server.url))
            return per_task, first_prelabel, registry.versions(project)
        finally:
            for process in reversed(processes):
                process.stop()
            ls.stop()
            redis_server.stop()


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    report: dict[str, Any] = {"machine": machine(), "seconds_per_task": args.seconds_per_task,
                              "pace": args.pace,
                              "match_iou": MATCH_IOU, "weights": args.weights,
                              "arch": args.arch or "default"}
    per_task, first_prelabel, versions = replay(args, report, started)
    trained = {v["version"] for v in versions}  # not the base model Label Studio asked for
    first_prelabel = {k: v for k, v in first_prelabel.items() if k in trained}
    report["models"] = [{"version": v["version"], "labeled_tasks": v.get("labeled_tasks"),
                         "train_labels": v.get("train_labels"),
                         "val_ap50": (v.get("metrics") or {}).get("ap50"),
                         "calibration": v.get("calibration"),
                         "status": v.get("status"), "promoted": v.get("promoted_at") is not None,
                         "first_prelabels_at_task": first_prelabel.get(v["version"])}
                        for v in versions]
    report["summary"] = summary(args, per_task, report["models"], started)
    report["per_task"] = per_task
    if args.plots:
        report["plots"] = plots(report, args.plots)
    emit(report, args.out)
    print(json.dumps(report["summary"]), file=sys.stderr)


if __name__ == "__main__":
    main()
