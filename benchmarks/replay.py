"""Replay benchmark: how much drawing does the assistance save a labeler?

A simulated labeler works through a real Label Studio 1.23.2 project task by task, in the
order Label Studio serves them (`/api/projects/ID/next`), while the real loop runs beside it:
webhooks -> `mlassist serve` -> an RQ worker that trains, validates, promotes and pushes
pre-annotations back. For each task the labeler takes the pre-annotation it finds: a predicted
box that matches a ground-truth box (IoU >= 0.5, same class) is accepted as it is, a predicted
box that overlaps a remaining ground-truth box (IoU >= 0.1) is edited onto it, other predicted
boxes are deleted, and ground-truth boxes nobody predicted are drawn. It then submits, marking
each region's origin as Label Studio's editor does, and spends `--seconds-per-task` (a
stand-in for human time) before the next task.

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

    python benchmarks/replay.py [--tasks 300] [--seconds-per-task 2] [--out F] [--plots DIR]
        [--scenes shapes|realistic] [--preset standard|hard] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.boxes import from_region_value, to_region  # noqa: E402
from backend.coco import import_coco, read_coco  # noqa: E402
from backend.labelstudio import LabelStudioAPI, LabelStudioAuth  # noqa: E402
from backend.localstack import Process, free_port  # noqa: E402
from backend.model.registry import LocalStore, Registry  # noqa: E402
from backend.scenes import make_scene  # noqa: E402
from benchmarks import realistic  # noqa: E402
from benchmarks.report import emit, machine  # noqa: E402
from tests.labelstudio import ADMIN_TOKEN, start_label_studio  # noqa: E402
from tests.redis_server import RedisServer, redis_binary  # noqa: E402
from tests.services import Backend, mlassist_bin  # noqa: E402

MATCH_IOU, EDIT_IOU = 0.5, 0.1
SECRET = "replay-secret"


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


def plots(report: dict[str, Any], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    tasks = report["per_task"]
    index = np.arange(1, len(tasks) + 1)
    appeared = [(m["first_prelabels_at_task"], m["version"]) for m in report["models"]
                if m.get("first_prelabels_at_task")]
    written = []

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.step(index, [t["champion_val_ap50"] or 0 for t in tasks], where="post", color="#2b7a3d")
    ax.set(xlabel="human-labeled tasks", ylabel="champion AP50 (validation)", ylim=(0, 1.02),
           title="Champion quality against labeling progress")
    for at, version in appeared:
        ax.axvline(at, color="#999", lw=0.8, ls="--")
        ax.text(at, 0.03, version.rsplit("-", 1)[-1], rotation=90, fontsize=8, color="#666")
    fig.tight_layout()
    fig.savefig(folder / "replay-ap50.png", dpi=110)
    written.append(str(folder / "replay-ap50.png"))

    fig, ax = plt.subplots(figsize=(10, 4))
    bottom = np.zeros(len(tasks))
    for key, color in (("accepted", "#2b7a3d"), ("edited", "#e0a526"), ("drawn", "#8c9bab")):
        values = np.array([t[key] for t in tasks])
        ax.bar(index, values, bottom=bottom, color=color, width=1.0, label=key)
        bottom += values
    ax.bar(index, -np.array([t["deleted"] for t in tasks]), color="#c0392b", width=1.0,
           label="deleted (below 0)")
    ax.set(xlabel="task, in the order labeled", ylabel="boxes",
           title="What the labeler did with each task")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "replay-boxes.png", dpi=110)
    written.append(str(folder / "replay-boxes.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    window = 20
    accepted = np.array([t["accepted"] for t in tasks], float)
    truth = np.array([t["truth_boxes"] for t in tasks], float)
    kernel = np.ones(window)
    share = np.convolve(accepted, kernel, "valid") / np.maximum(
        np.convolve(truth, kernel, "valid"), 1)
    ax.plot(np.arange(window, len(tasks) + 1), share, color="#2b7a3d")
    for at, _ in appeared:
        ax.axvline(at, color="#999", lw=0.8, ls="--")
    ax.set(xlabel="human-labeled tasks", ylim=(0, 1.02),
           ylabel=f"boxes arriving as correct pre-labels\n(share, last {window} tasks)",
           title="Share of boxes the labeler did not have to draw or fix")
    fig.tight_layout()
    fig.savefig(folder / "replay-share.png", dpi=110)
    written.append(str(folder / "replay-share.png"))
    plt.close("all")
    return written


def main() -> None:
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
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plots", type=Path)
    args = parser.parse_args()
    started = time.monotonic()
    report: dict[str, Any] = {"machine": machine(), "seconds_per_task": args.seconds_per_task,
                              "match_iou": MATCH_IOU}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.coco:
            if args.images is None:
                raise SystemExit("--coco needs --images DIR")
            coco, images = read_coco(args.coco), args.images
            report["dataset"] = str(args.coco)
        elif args.scenes == "realistic":
            coco = realistic.write_dataset(work / "realistic", args.tasks, args.preset,
                                           args.seed)
            images = work / "realistic" / "images"
            report["dataset"] = (f"{args.tasks} realistic scenes, preset {args.preset}, "
                                 f"seed {args.seed}")
        else:
            images = work / "scenes"
            coco = scenes_as_coco(args.tasks, images)
            report["dataset"] = f"{args.tasks} generated scenes"
        categories = [c["name"] for c in coco["categories"]]
        names = {c["id"]: c["name"] for c in coco["categories"]}
        truth: dict[str, list] = {i["file_name"]: [] for i in coco["images"]}
        sizes = {i["file_name"]: (i["width"], i["height"]) for i in coco["images"]}
        by_id = {i["id"]: i["file_name"] for i in coco["images"]}
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            truth[by_id[ann["image_id"]]].append(((x, y, x + w, y + h),
                                                  names[ann["category_id"]]))

        binary = redis_binary()
        if binary is None:
            raise SystemExit("redis-server not found (scripts/bootstrap.sh installs it)")
        redis_server = RedisServer(binary, work / "redis")
        ls = start_label_studio(work)
        processes: list[Any] = []
        try:
            headers = {"Authorization": f"Token {ADMIN_TOKEN}"}
            project = requests.post(f"{ls.url}/api/projects", headers=headers, timeout=30,
                                    json={"title": "replay",
                                          "label_config": label_config(categories)}).json()["id"]
            api = LabelStudioAPI(LabelStudioAuth(ls.url, ADMIN_TOKEN))
            imported = import_coco(api, project, coco, str(images))
            report["tasks"] = imported.tasks_created
            port = free_port()
            env = {**os.environ, "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ADMIN_TOKEN,
                   "REDIS_URL": redis_server.url, "MODEL_DIR": str(work / "models"),
                   "IMAGE_CACHE_DIR": str(work / "images"), "WEBHOOK_SECRET": SECRET,
                   "PORT": str(port), "BACKEND_PUBLIC_URL": f"http://127.0.0.1:{port}",
                   "MODEL_WEIGHTS": "none", "DEVICE": "cpu", "TORCH_HOME": str(work / "torch"),
                   "LOG_LEVEL": "info"}
            backend = Backend(env, work / "backend.log").wait()
            processes.append(backend)
            processes.append(Process([mlassist_bin(), "worker"], env, work / "worker.log"))
            Process([mlassist_bin(), "connect", "--project", str(project)], env,
                    work / "connect.log").process.wait(60)
            registry = Registry(LocalStore(work / "models" / "registry"), work / "cache")

            per_task: list[dict[str, Any]] = []
            first_prelabel: dict[str, int] = {}
            while True:
                answer = requests.get(f"{ls.url}/api/projects/{project}/next",
                                      headers=headers, timeout=60)
                if answer.status_code == 404:
                    break
                answer.raise_for_status()
                task = requests.get(f"{ls.url}/api/tasks/{answer.json()['id']}",
                                    headers=headers, timeout=60).json()
                name = task["data"]["mlassist_coco"]
                shown = max((p for p in task.get("predictions") or []),
                            key=lambda p: p.get("created_at") or "", default=None)
                width, height = sizes[name]
                result, counts = review((shown or {}).get("result") or [], truth[name],
                                        width, height)
                requests.post(f"{ls.url}/api/tasks/{task['id']}/annotations", headers=headers,
                              timeout=60, json={"result": result,
                                                "parent_prediction": (shown or {}).get("id")}
                              ).raise_for_status()
                champion = registry.champion(project)
                version = (shown or {}).get("model_version")
                if version and version not in first_prelabel:
                    first_prelabel[version] = len(per_task) + 1
                per_task.append({"task": task["id"], "truth_boxes": len(truth[name]),
                                 **counts, "prelabel_version": version,
                                 "champion": champion["version"] if champion else None,
                                 "champion_val_ap50": ((champion or {}).get("metrics") or {})
                                 .get("ap50"), "t": round(time.monotonic() - started, 1)})
                time.sleep(args.seconds_per_task)
            versions = registry.versions(project)
        finally:
            for process in reversed(processes):
                process.stop()
            ls.stop()
            redis_server.stop()

    trained = {v["version"] for v in versions}  # not the base model Label Studio asked for
    first_prelabel = {k: v for k, v in first_prelabel.items() if k in trained}
    report["models"] = [{"version": v["version"], "labeled_tasks": v.get("labeled_tasks"),
                         "train_labels": v.get("train_labels"),
                         "val_ap50": (v.get("metrics") or {}).get("ap50"),
                         "status": v.get("status"), "promoted": v.get("promoted_at") is not None,
                         "first_prelabels_at_task": first_prelabel.get(v["version"])}
                        for v in versions]
    last = per_task[-100:]
    promoted = [m for m in report["models"] if m["promoted"]]
    truth_total = sum(t["truth_boxes"] for t in per_task)
    report["summary"] = {
        "tasks_labeled": len(per_task),
        "truth_boxes": truth_total,
        "accepted": sum(t["accepted"] for t in per_task),
        "edited": sum(t["edited"] for t in per_task),
        "deleted": sum(t["deleted"] for t in per_task),
        "drawn": sum(t["drawn"] for t in per_task),
        "share_not_drawn": round(1 - sum(t["drawn"] for t in per_task) / max(truth_total, 1), 3),
        "last_100_share_correct_prelabels": round(
            sum(t["accepted"] for t in last) / max(sum(t["truth_boxes"] for t in last), 1), 3),
        "first_promoted_model_labeled_tasks": promoted[0]["labeled_tasks"] if promoted
        else None,
        "first_trained_prelabels_at_task": min(first_prelabel.values(), default=None),
        "models_trained": len(versions), "models_promoted": len(promoted),
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    report["per_task"] = per_task
    if args.plots:
        report["plots"] = plots(report, args.plots)
    emit(report, args.out)
    print(json.dumps(report["summary"]), file=sys.stderr)


if __name__ == "__main__":
    main()
