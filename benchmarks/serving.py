"""Serving benchmark: /health, /setup right after start, /predict against the bare model.

Starts a real `mlassist serve` (gunicorn) with an untrained default-architecture checkpoint
(the timings do not depend on the weights), serves generated images on loopback, and prints
one JSON object. The bare-model baseline runs in this process on the same decoded images, in
the same run, with the same thread count.

    python benchmarks/serving.py [--repeats 30] [--out results.json]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.images import decode_image  # noqa: E402
from backend.model.detector import ModelSpec, load_detector  # noqa: E402
from benchmarks.report import emit  # noqa: E402
from tests import media  # noqa: E402
from tests.httpserver import LoopbackServer  # noqa: E402
from tests.services import Backend, untrained_checkpoint  # noqa: E402

CONFIG = ('<View><Image name="image" value="$image"/>'
          '<RectangleLabels name="label" toName="image">'
          '<Label value="person"/><Label value="car"/></RectangleLabels></View>')
THREADS = 2


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 3),
        "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
        "n": len(ordered),
    }


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (gunicorn master + workers), in MB."""
    total = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines()
                      if line.startswith("VmRSS:"))
        pids.extend(int(child) for child in children)
    return round(total / 1024, 1)


def timed(call, repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--health-repeats", type=int, default=500)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    report: dict = {"machine": {"python": platform.python_version(), "cpu": platform.machine(),
                                "threads": THREADS}}
    with tempfile.TemporaryDirectory() as tmp, LoopbackServer() as images:
        checkpoint = untrained_checkpoint(Path(tmp) / "model.pt", ["person", "car"])
        pictures = [media.jpeg(640, 480, seed) for seed in range(16)]
        urls = [images.add(f"/{i}.jpg", data, headers={"Content-Type": "image/jpeg"})
                for i, data in enumerate(pictures)]

        started = time.perf_counter()
        backend = Backend({"LABEL_STUDIO_URL": "http://127.0.0.1:9",
                           "LABEL_STUDIO_API_KEY": "benchmark-token",
                           "MODEL_WEIGHTS": str(checkpoint),
                           "ALLOWED_IMAGE_HOSTS": f"127.0.0.1:{images.port}",
                           "TORCH_THREADS": str(THREADS)}, Path(tmp) / "backend.log")
        try:
            backend.wait(timeout=60)
            health_up = time.perf_counter() - started
            setup_started = time.perf_counter()
            first_setup = requests.post(f"{backend.url}/setup", timeout=10,
                                        json={"project": "1.1", "schema": CONFIG})
            report["startup"] = {
                "health_answers_after_s": round(health_up, 3),
                "first_setup_s": round(time.perf_counter() - setup_started, 3),
                "first_setup_status": first_setup.status_code,
                "first_setup_limit_s": 3.0,
            }
            backend.wait_model()
            session = requests.Session()
            report["health"] = percentiles(timed(
                lambda: session.get(f"{backend.url}/health", timeout=5),
                args.health_repeats))
            report["setup"] = percentiles(timed(
                lambda: session.post(f"{backend.url}/setup", timeout=5,
                                     json={"project": "1.1", "schema": CONFIG}),
                args.repeats))
            for count in (1, 16):
                body = {"tasks": [{"id": i, "data": {"image": url}}
                                  for i, url in enumerate(urls[:count])],
                        "label_config": CONFIG}

                def call(body: dict = body) -> None:
                    response = session.post(f"{backend.url}/predict", json=body, timeout=100)
                    response.raise_for_status()

                call()  # warm-up
                report[f"predict_{count}_tasks"] = percentiles(timed(call, args.repeats))
            report["server_rss_mb_after_runs"] = rss_mb(backend.pid)
        finally:
            backend.stop()

        detector = load_detector(ModelSpec("ssdlite320_mobilenet_v3_large", str(checkpoint),
                                           "error", "bench"), "cpu", THREADS)
        decoded = [decode_image(data, 10**8).image for data in pictures]
        for count in (1, 16):
            batch = decoded[:count]
            detector.predict(batch)  # warm-up
            bare = percentiles(timed(lambda batch=batch: detector.predict(batch), args.repeats))
            report[f"bare_forward_{count}_images"] = bare
            served = report[f"predict_{count}_tasks"]
            report[f"predict_{count}_overhead_p50"] = round(
                served["p50_ms"] / bare["p50_ms"] - 1.0, 3)

    emit(report, args.out)


if __name__ == "__main__":
    main()
