"""Learning benchmark: `mlassist train` on labels held in a real Label Studio, from scratch.

Generated scenes are uploaded to a real Label Studio 1.23.2 and labeled through its API with
their ground truth; `mlassist train --project ID` (the real CLI, default architecture, from
scratch: no COCO weights) runs one round per entry of --rounds, each time on more labeled
tasks; every promoted champion is then measured on scenes that were never in Label Studio.
Prints JSON: per version AP50/AP on the frozen validation split and on the held-out scenes,
training seconds, and whether it was promoted.

    python benchmarks/learning.py [--rounds 60,300] [--held-out 100] [--steps 500]
        [--scenes shapes|realistic] [--preset standard|hard] [--seed 0]

`--scenes realistic` uses benchmarks/realistic (24 long-tailed classes on photographs) instead
of the generated shapes; `--seed` picks the realistic set.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from label_studio_sdk import LabelStudio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.demo.localstack import upload_images  # noqa: E402
from backend.demo.scenes import SHAPES, make_scene  # noqa: E402
from backend.media.images import LoadedImage  # noqa: E402
from backend.model.detector import checkpoint_detector  # noqa: E402
from backend.model.evaluation import ImagePrediction, ImageTruth, coco_metrics  # noqa: E402
from backend.model.registry import LocalStore, Registry  # noqa: E402
from benchmarks import realistic  # noqa: E402
from benchmarks.report import emit  # noqa: E402
from tests.labels import CONFIG, regions_of  # noqa: E402
from tests.labelstudio import ADMIN_TOKEN, start_label_studio  # noqa: E402

HELD_OUT_SEED = 100_000


def upload(ls_url: str, project: int, seeds: list[int],
           make: Callable[[int], Any] = make_scene) -> None:
    files = []
    for seed in seeds:
        buffer = io.BytesIO()
        make(seed).image.save(buffer, format="JPEG", quality=92)
        files.append((f"scene-{seed:05d}.jpg", buffer.getvalue(), "image/jpeg"))
    upload_images(ls_url, {"Authorization": f"Token {ADMIN_TOKEN}"}, project, files)


def held_out_metrics(checkpoint: Path, seeds: range,
                     make: Callable[[int], Any] = make_scene) -> dict:
    detector = checkpoint_detector(checkpoint, None, "cpu")
    names = detector.class_names
    truths, predictions = [], []
    scenes = [make(seed) for seed in seeds]
    outputs = detector.predict([scene.image for scene in scenes], batch_size=8)
    for scene, output in zip(scenes, outputs, strict=True):
        loaded = LoadedImage(scene.image)
        truths.append(ImageTruth(np.array(scene.boxes, np.float32).reshape(-1, 4),
                                 np.array([names.index(label) for label in scene.labels]),
                                 loaded.width, loaded.height))
        predictions.append(ImagePrediction(output.boxes, output.scores, output.labels))
    metrics = coco_metrics(truths, predictions, names)
    return {"ap50": round(metrics.ap50, 4), "ap": round(metrics.ap, 4),
            "per_class_ap50": {k: v["ap50"] for k, v in metrics.per_class.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", default="60,300",
                        help="labeled tasks before each training round")
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--scenes", choices=("shapes", "realistic"), default="shapes")
    parser.add_argument("--preset", choices=sorted(realistic.PRESETS), default="standard")
    parser.add_argument("--seed", type=int, default=0, help="the realistic set's seed")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rounds = [int(n) for n in args.rounds.split(",")]
    shapes = args.scenes == "shapes"
    make: Callable[[int], Any] = make_scene if shapes else partial(
        realistic.make_scene, preset=args.preset, seed=args.seed)

    report: dict = {"machine": {"python": platform.python_version(), "cpu": platform.machine(),
                                "cores": os.cpu_count(), "device": "cpu"},
                    "arch": "ssdlite320_mobilenet_v3_large", "start": "scratch",
                    "steps_per_round": args.steps,
                    "scenes": "shapes" if shapes else f"realistic {args.preset} seed {args.seed}",
                    "labels": SHAPES if shapes else realistic.CLASS_NAMES, "versions": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ls = start_label_studio(work)
        try:
            client = LabelStudio(base_url=ls.url, api_key=ADMIN_TOKEN)
            config = CONFIG if shapes else realistic.label_config()
            project = client.projects.create(title="learning benchmark",
                                             label_config=config).id
            upload(ls.url, project, list(range(max(rounds))), make)
            tasks = sorted(client.tasks.list(project=project), key=lambda t: t.id)
            seeds = {t.id: int(Path(t.data["image"]).stem.split("-")[-1]) for t in tasks}
            env = {**os.environ, "LABEL_STUDIO_URL": ls.url,
                   "LABEL_STUDIO_API_KEY": ADMIN_TOKEN, "MODEL_DIR": str(work / "models"),
                   "IMAGE_CACHE_DIR": str(work / "images"), "TORCH_HOME": str(work / "torch"),
                   "DEVICE": "cpu", "LOG_LEVEL": "warning"}
            labeled = 0
            total_train_s = 0.0
            registry = Registry(LocalStore(work / "models" / "registry"), work / "cache")
            for target in rounds:
                for task in tasks[labeled:target]:
                    client.annotations.create(id=task.id,
                                              result=regions_of(make(seeds[task.id])))
                labeled = target
                started = time.monotonic()
                done = subprocess.run(
                    [str(Path(sys.executable).parent / "mlassist"), "train", "--project",
                     str(project), "--steps", str(args.steps)],
                    env=env, capture_output=True, text=True, timeout=3600)
                seconds = time.monotonic() - started
                total_train_s += seconds
                if done.returncode != 0:
                    raise SystemExit(f"mlassist train failed:\n{done.stderr[-3000:]}")
                outcome = json.loads(done.stdout[:done.stdout.rindex("}") + 1])
                entry = {"version": outcome["version"], "labeled_tasks": labeled,
                         "train_images": outcome["train_images"],
                         "val_images": outcome["val_images"],
                         "val_ap50": round(outcome["metrics"]["ap50"], 4),
                         "val_ap": round(outcome["metrics"]["ap"], 4),
                         "promoted": outcome["promoted"], "reason": outcome["reason"],
                         "started_from": outcome["started_from"],
                         "train_seconds": round(seconds, 1),
                         "cumulative_train_seconds": round(total_train_s, 1),
                         "thresholds": {k: v["threshold"]
                                        for k, v in outcome["calibration"].items()}}
                champion = registry.champion(project)
                if champion is not None:
                    entry["champion"] = champion["version"]
                    entry["champion_held_out"] = held_out_metrics(
                        registry.checkpoint_path(project, champion["version"]),
                        range(HELD_OUT_SEED, HELD_OUT_SEED + args.held_out), make)
                report["versions"].append(entry)
                print(json.dumps(entry), file=sys.stderr)
        finally:
            ls.stop()
    best = [v for v in report["versions"] if v.get("champion_held_out", {}).get("ap50", 0) >= 0.9]
    report["reached_ap50_0.9"] = bool(best)
    report["train_seconds_to_ap50_0.9"] = best[0]["cumulative_train_seconds"] if best else None
    emit(report, args.out)


if __name__ == "__main__":
    main()
