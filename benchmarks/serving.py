"""Serving benchmark: ONNX Runtime against eager torch, and /predict against the bare forward.

1. Runtimes: the trained default model (SSDlite320, trained in a child process for
   `--train-steps` on generated scenes, so its scores look like a real model's) on the same
   decoded 640x480 images, eager torch against ONNX Runtime (each in fresh processes, three
   alternating rounds), 1 and 16 images; and how far their detections are apart.
2. Server: a real `mlassist serve` (gunicorn, default web settings, INFERENCE_RUNTIME=auto)
   serving that model: /health, /setup right after start, /predict for 1 and 16 tasks whose
   images come from a loopback server; where the time goes, from the server's own per-stage
   histograms (/metrics); then 8 concurrent clients against one.
3. The bare forward of the runtime the server chose, in this process on the same decoded images
   after the server stopped, with the same thread count: the server's overhead is /predict's
   p50 over it.

    python benchmarks/serving.py [--repeats 40] [--train-steps 500] [--out results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.demo.scenes import make_scene  # noqa: E402
from backend.labelstudio.client import LabelStudioAuth  # noqa: E402
from backend.media.images import ImageFetcher, decode_image  # noqa: E402
from backend.model.detector import Detector, checkpoint_detector  # noqa: E402
from backend.model.registry import LocalStore, Registry  # noqa: E402
from backend.model.training import train_round  # noqa: E402
from benchmarks.report import emit, machine, process_tree, rss_kb, stop_cleanly_on_sigterm  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from tests.httpserver import LoopbackServer  # noqa: E402
from tests.labels import CONFIG, FakeLabelStudio, exported_tasks  # noqa: E402
from tests.services import Backend, untrained_checkpoint  # noqa: E402

THREADS = 2
CLIENTS = 8
STAGES = ("fetch", "decode", "forward", "results")


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 3),
        "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
        "n": len(ordered),
    }


def rss_mb(pid: int) -> float:
    """Resident memory of a process tree, in MB."""
    return round(sum(rss_kb(current) for current in process_tree(pid)) / 1024, 1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process tree."""
    total = 0.0
    for current in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / 100.0  # utime, stime: clock ticks
    return total


def timed(call, repeats: int) -> list[float]:
    samples = []
    for i in range(repeats):
        started = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - started)
    return samples


def trained_checkpoint(work: Path, steps: int) -> tuple[Path, dict]:
    """Train the default architecture on 60 generated scenes; (checkpoint, what happened)."""
    if steps <= 0:
        return untrained_checkpoint(work / "untrained.pt", ["circle", "square", "triangle"]), \
            {"steps": 0}
    settings = make_settings(MODEL_DIR=str(work / "models"), IMAGE_CACHE_DIR=str(work / "cache"),
                             MIN_FIRST_AP50="0", TRAIN_BATCH_SIZE="4")
    registry = Registry(LocalStore(work / "registry"), work / "registry-cache")
    fetcher = ImageFetcher(LabelStudioAuth("http://127.0.0.1:9", "k"), (), max_bytes=10**7,
                           max_pixels=10**8, timeout=5)
    started = time.perf_counter()
    result = train_round(1, settings, FakeLabelStudio(exported_tasks(range(1, 61))), fetcher,
                         registry, steps=steps)
    return registry.checkpoint_path(1, result.version), {
        "steps": steps, "seconds": round(time.perf_counter() - started, 1),
        "val_ap50": round(float(result.metrics.get("ap50", 0.0)), 3)}


def scene_jpegs(count: int) -> list[bytes]:
    """Generated scenes (the kind the model learned) at 640x480, as JPEG files."""
    pictures = []
    for seed in range(1000, 1000 + count):
        buffer = io.BytesIO()
        make_scene(seed).image.resize((640, 480)).save(buffer, format="JPEG", quality=90)
        pictures.append(buffer.getvalue())
    return pictures


def detections_apart(a: Detector, b: Detector, images: list, floor: float = 0.3) -> dict:
    """How far two detectors' boxes scored >= `floor` are apart: each box of `a` is matched to
    the box of `b` with the same label and the highest IoU."""
    import torch
    from torchvision.ops import box_iou

    worst_box = worst_score = 0.0
    lowest_iou = 1.0
    unmatched = total = 0
    for x, y in zip(a.predict(images), b.predict(images), strict=True):
        keep_x, keep_y = x.scores >= floor, y.scores >= floor
        total += int(keep_x.sum())
        unmatched += abs(int(keep_x.sum()) - int(keep_y.sum()))
        if not keep_x.any() or not keep_y.any():
            continue
        iou = box_iou(torch.from_numpy(x.boxes[keep_x]), torch.from_numpy(y.boxes[keep_y]))
        iou[torch.from_numpy(x.labels[keep_x][:, None] != y.labels[keep_y][None, :])] = 0.0
        best, match = iou.max(dim=1)
        for i, j in enumerate(match.tolist()):
            lowest_iou = min(lowest_iou, float(best[i]))
            worst_box = max(worst_box, float(np.abs(x.boxes[keep_x][i]
                                                     - y.boxes[keep_y][j]).max()))
            worst_score = max(worst_score, abs(float(x.scores[keep_x][i])
                                               - float(y.scores[keep_y][j])))
    return {"images": len(images), "score_floor": floor, "boxes": total,
            "boxes_without_a_match": unmatched, "lowest_iou": round(lowest_iou, 6),
            "max_box_difference_px": round(worst_box, 5),
            "max_score_difference": round(worst_score, 6)}


def train_child(checkpoint: Path, steps: int) -> dict:
    """Train in a child process: training leaves a process's allocator warmed up (eager torch
    then runs 20-25 % faster than in a fresh server), which would flatter the baseline."""
    child = subprocess.run([sys.executable, __file__, "--train-only", str(checkpoint),
                            "--train-steps", str(steps)],
                           capture_output=True, text=True, check=True)
    info: dict = json.loads(child.stdout.strip().splitlines()[-1])
    return info


def time_runtime(name: str, checkpoint: Path, pictures: Path, repeats: int) -> dict:
    """In this (fresh) process, as in a server that runs only this runtime: p50 of 1 image and
    of 16 images."""
    import torch

    torch.set_num_threads(THREADS)
    decoded = [decode_image(path.read_bytes(), 10**8).image
               for path in sorted(pictures.glob("*.jpg"))]
    detector = checkpoint_detector(checkpoint, "bench", "cpu", name, THREADS)
    found: dict = {"runtime": detector.runtime}
    for count in (1, 16):
        def run(i: int, count: int = count) -> None:
            detector.predict(decoded[i % 16:i % 16 + 1] if count == 1 else decoded)

        run(0)
        found[str(count)] = percentiles(timed(run, repeats if count == 1
                                              else max(8, repeats // 4)))
    return found


def runtimes(checkpoint: Path, pictures: Path, repeats: int, rounds: int = 3) -> dict:
    """Eager torch against ONNX Runtime, each in fresh processes as a server would run it (not
    in one process: torch's OpenMP threads spin after an eager forward and slow whatever runs
    next), alternating `rounds` times so that the machine's noise falls on both alike; the
    median of the rounds' p50s."""
    decoded = [decode_image(path.read_bytes(), 10**8).image
               for path in sorted(pictures.glob("*.jpg"))]
    eager = checkpoint_detector(checkpoint, "bench", "cpu", "torch", THREADS)
    onnx = checkpoint_detector(checkpoint, "bench", "cpu", "onnxruntime", THREADS)
    report: dict = {"agreement": detections_apart(eager, onnx, decoded),
                    "check_at_load_max_difference": onnx._forward.max_difference}  # type: ignore[attr-defined]
    del eager, onnx
    rounds_seen: dict[str, list[dict]] = {"torch": [], "onnxruntime": []}
    for _ in range(rounds):
        for name in rounds_seen:
            child = subprocess.run(
                [sys.executable, __file__, "--time-runtime", name, "--checkpoint",
                 str(checkpoint), "--pictures", str(pictures), "--repeats", str(repeats)],
                capture_output=True, text=True, check=True)
            rounds_seen[name].append(json.loads(child.stdout.strip().splitlines()[-1]))
    for count in ("1", "16"):
        for name, seen in rounds_seen.items():
            report[f"{name}_{count}"] = {
                "p50_ms": round(statistics.median(r[count]["p50_ms"] for r in seen), 3),
                "p95_ms": round(statistics.median(r[count]["p95_ms"] for r in seen), 3),
                "rounds_p50_ms": [r[count]["p50_ms"] for r in seen]}
        report[f"speedup_{count}_p50"] = round(
            report[f"torch_{count}"]["p50_ms"] / report[f"onnxruntime_{count}"]["p50_ms"], 2)
    return report


def stage_totals(url: str, session: requests.Session) -> dict[str, tuple[float, float]]:
    """stage -> (sum of seconds, count) from the server's /metrics."""
    text = session.get(f"{url}/metrics", timeout=5).text
    found: dict[str, list[float]] = {}
    for kind in ("sum", "count"):
        for stage, value in re.findall(
                rf'^mlassist_predict_stage_seconds_{kind}{{stage="(\w+)"}} (\S+)$', text, re.M):
            found.setdefault(stage, []).append(float(value))
    return {stage: (values[0], values[1]) for stage, values in found.items()}


def stage_means(before: dict, after: dict, requests_made: int) -> dict[str, float]:
    """Mean milliseconds per request spent in each stage between two /metrics reads."""
    return {stage: round(1000 * (after.get(stage, (0, 0))[0] - before.get(stage, (0, 0))[0])
                         / requests_made, 3) for stage in STAGES}


def concurrent_clients(url: str, body_for, clients: int, per_client: int) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def client(offset: int) -> None:
        session = requests.Session()
        for i in range(per_client):
            started = time.perf_counter()
            session.post(f"{url}/predict", json=body_for(offset + i), timeout=100) \
                .raise_for_status()
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def serve(checkpoint: Path, urls: list[str], repeats: int, work: Path, port: int) -> dict:
    report: dict = {"settings": {"WEB_WORKERS": 1, "WEB_THREADS": 4, "TORCH_THREADS": THREADS,
                                 "INFERENCE_RUNTIME": "auto"}}
    started = time.perf_counter()
    backend = Backend({"LABEL_STUDIO_URL": "http://127.0.0.1:9",
                       "LABEL_STUDIO_API_KEY": "benchmark-token",
                       "MODEL_WEIGHTS": str(checkpoint), "MODEL_DIR": str(work / "served"),
                       "ALLOWED_IMAGE_HOSTS": f"127.0.0.1:{port}", "SCORE_THRESHOLD": "0.3",
                       "TORCH_THREADS": str(THREADS), "LOG_LEVEL": "warning"},
                      work / "backend.log")
    try:
        backend.wait(timeout=60)
        health_up = time.perf_counter() - started
        setup_started = time.perf_counter()
        first_setup = requests.post(f"{backend.url}/setup", timeout=10,
                                    json={"project": "1.1", "schema": CONFIG})
        report["startup"] = {"health_answers_after_s": round(health_up, 3),
                             "first_setup_s": round(time.perf_counter() - setup_started, 3),
                             "first_setup_status": first_setup.status_code,
                             "first_setup_limit_s": 3.0}
        backend.wait_model()
        session = requests.Session()
        report["health"] = percentiles(timed(
            lambda i: session.get(f"{backend.url}/health", timeout=5), 10 * repeats))
        report["setup"] = percentiles(timed(
            lambda i: session.post(f"{backend.url}/setup", timeout=5,
                                   json={"project": "1.1", "schema": CONFIG}), repeats))

        def body_for(count: int):
            def body(i: int) -> dict:
                chosen = [urls[(i + n) % len(urls)] for n in range(count)]
                return {"tasks": [{"id": n + 1, "data": {"image": url}}
                                  for n, url in enumerate(chosen)],
                        "label_config": CONFIG}
            return body

        for count in (1, 16):
            body = body_for(count)

            def call(i: int, body=body) -> None:
                session.post(f"{backend.url}/predict", json=body(i), timeout=100) \
                    .raise_for_status()

            call(0)
            runs = repeats if count == 1 else max(5, repeats // 4)
            before = stage_totals(backend.url, session)
            report[f"predict_{count}_tasks"] = percentiles(timed(call, runs))
            report[f"predict_{count}_stages_mean_ms"] = stage_means(
                before, stage_totals(backend.url, session), runs)
        boxes = session.post(f"{backend.url}/predict", json=body_for(16)(0), timeout=100).json()
        report["boxes_returned_16_tasks"] = sum(len(item.get("result", []))
                                                for item in boxes["results"])

        single = percentiles(timed(lambda i: session.post(
            f"{backend.url}/predict", json=body_for(1)(i), timeout=100), repeats))
        cpu_before = cpu_seconds(backend.pid)
        wall_started = time.perf_counter()
        crowd = percentiles(concurrent_clients(backend.url, body_for(1), CLIENTS, repeats))
        wall = time.perf_counter() - wall_started
        cpu_per_request = (cpu_seconds(backend.pid) - cpu_before) / (CLIENTS * repeats)
        report["concurrency"] = {
            "clients": CLIENTS, "tasks_per_request": 1,
            "single_client": single, "concurrent": crowd,
            "p95_ratio": round(crowd["p95_ms"] / single["p95_ms"], 2),
            "server_cpu_ms_per_request": round(1000 * cpu_per_request, 2),
            "requests_per_s": round(CLIENTS * repeats / wall, 1),
            "cores": machine()["cores"],
        }
        report["server_rss_mb_after_runs"] = rss_mb(backend.pid)
        report["runtime"] = session.get(f"{backend.url}/health", timeout=5).json().get("runtime")
    finally:
        backend.stop()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--train-steps", type=int, default=500,
                        help="the model's training (500 = the TRAIN_STEPS default)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--train-only", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--time-runtime", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path,
                        help="use this trained checkpoint instead of training one")
    parser.add_argument("--pictures", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    stop_cleanly_on_sigterm()
    if args.time_runtime:  # a child process of runtimes()
        print(json.dumps(time_runtime(args.time_runtime, args.checkpoint, args.pictures,
                                      args.repeats)))
        return
    if args.train_only:  # the child process below
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint, info = trained_checkpoint(Path(tmp), args.train_steps)
            shutil.copy(checkpoint, args.train_only)
        print(json.dumps(info))
        return

    import torch

    torch.set_num_threads(THREADS)
    report: dict = {"machine": {**machine(), "threads": THREADS}}
    with tempfile.TemporaryDirectory() as tmp, LoopbackServer() as images:
        work = Path(tmp)
        checkpoint = work / "trained.pt"
        if args.checkpoint:  # a model trained elsewhere
            shutil.copy(args.checkpoint, checkpoint)
            report["model"] = {"checkpoint": str(args.checkpoint)}
        else:
            report["model"] = train_child(checkpoint, args.train_steps)
        pictures = scene_jpegs(16)
        urls = [images.add(f"/{i}.jpg", data, headers={"Content-Type": "image/jpeg"})
                for i, data in enumerate(pictures)]
        decoded = [decode_image(data, 10**8).image for data in pictures]
        report["images"] = {"count": len(pictures), "size": "640x480",
                            "mean_jpeg_bytes": int(statistics.mean(map(len, pictures)))}
        folder = work / "pictures"
        folder.mkdir()
        for i, data in enumerate(pictures):
            (folder / f"{i:02d}.jpg").write_bytes(data)
        report["runtimes"] = runtimes(checkpoint, folder, args.repeats)
        report["server"] = serve(checkpoint, urls, args.repeats, work, images.port)

        served = checkpoint_detector(checkpoint, "bench", "cpu", "auto", THREADS)
        report["bare_forward_runtime"] = served.runtime
        for count in (1, 16):
            def bare(i: int, count: int = count) -> None:
                served.predict(decoded[i % 16:i % 16 + 1] if count == 1 else decoded)

            bare(0)
            forward = percentiles(timed(bare, args.repeats if count == 1
                                        else max(5, args.repeats // 4)))
            report[f"bare_forward_{count}_images"] = forward
            predicted = report["server"][f"predict_{count}_tasks"]
            report[f"predict_{count}_overhead_p50"] = round(
                predicted["p50_ms"] / forward["p50_ms"] - 1.0, 3)
    emit(report, args.out)


if __name__ == "__main__":
    main()
