"""Retraining-loop benchmark: webhook acknowledgement under 50 concurrent senders, and backlog
push-back throughput against Label Studio's own "Retrieve predictions" on the same tasks.

Real Redis, real `mlassist serve` (gunicorn), real Label Studio 1.23.2. The push-back and LS's
action use the same model (an untrained default-architecture checkpoint registered as both
projects' champion: speed does not depend on the weights) and the same images, in one run.

    python benchmarks/loop.py [--senders 50] [--events 40] [--tasks 200] [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from label_studio_sdk import LabelStudio
from redis import Redis
from rq import Queue

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.jobs import tasks as jobtasks  # noqa: E402
from backend.jobs.queues import TRAINING_QUEUE  # noqa: E402
from backend.localstack import free_port, upload_images  # noqa: E402
from backend.model.registry import LocalStore, Registry  # noqa: E402
from backend.scenes import make_scene  # noqa: E402
from backend.settings import Settings  # noqa: E402
from benchmarks.report import emit  # noqa: E402
from tests.labels import CONFIG  # noqa: E402
from tests.labelstudio import ADMIN_TOKEN, start_label_studio  # noqa: E402
from tests.redis_server import RedisServer, redis_binary  # noqa: E402
from tests.services import Backend, untrained_checkpoint  # noqa: E402

SECRET = "benchmark-secret"
AUTH = ("bench", "bench-pass")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def webhook_storm(url: str, senders: int, events: int, project: int) -> dict:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    body = {"action": "ANNOTATION_CREATED", "project": {"id": project}, "annotation": {"id": 1}}

    def send() -> None:
        session = requests.Session()
        for _ in range(events):
            started = time.perf_counter()
            response = session.post(f"{url}/webhook", json=body, timeout=10,
                                    headers={"X-MLAssist-Secret": SECRET})
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                errors[0] += response.status_code != 200

    threads = [threading.Thread(target=send) for _ in range(senders)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"senders": senders, "events": len(latencies), "errors": errors[0],
            "p50_ms": round(1000 * statistics.median(latencies), 2),
            "p99_ms": percentile(latencies, 0.99), "max_ms": percentile(latencies, 1.0),
            "wall_s": round(time.perf_counter() - started, 2)}


def make_project(client: LabelStudio, ls_url: str, title: str, images: list) -> int:
    project = client.projects.create(title=title, label_config=CONFIG).id
    upload_images(ls_url, {"Authorization": f"Token {ADMIN_TOKEN}"}, project, images)
    return project


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=50)
    parser.add_argument("--events", type=int, default=40, help="per sender")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report: dict = {"machine": {"python": platform.python_version(), "cpu": platform.machine(),
                                "cores": os.cpu_count(), "device": "cpu"}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        binary = redis_binary()
        if binary is None:
            raise SystemExit("redis-server not found (scripts/bootstrap.sh installs it)")
        redis_server = RedisServer(binary, work / "redis")
        ls = start_label_studio(work)
        backend = None
        try:
            client = LabelStudio(base_url=ls.url, api_key=ADMIN_TOKEN)
            images = []
            for seed in range(args.tasks):
                buffer = io.BytesIO()
                make_scene(seed).image.save(buffer, format="JPEG", quality=92)
                images.append((f"scene-{seed:05d}.jpg", buffer.getvalue(), "image/jpeg"))
            ours = make_project(client, ls.url, "push-back", images)
            theirs = make_project(client, ls.url, "LS retrieve predictions", images)

            registry = Registry(LocalStore(work / "models" / "registry"), work / "cache")
            checkpoint = untrained_checkpoint(work / "m.pt", ["circle", "square", "triangle"])
            for project in (ours, theirs):
                version = registry.reserve_version(project, "ssdlite320_mobilenet_v3_large")
                registry.add(project, {"version": version, "arch": "ssdlite320_mobilenet_v3_large",
                                       "class_names": ["__background__", "circle", "square",
                                                       "triangle"], "metrics": {"ap50": 0.5}},
                             checkpoint, promote=True, keep=3)

            port = free_port()
            env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ADMIN_TOKEN,
                   "REDIS_URL": redis_server.url, "MODEL_DIR": str(work / "models"),
                   "IMAGE_CACHE_DIR": str(work / "images"), "WEBHOOK_SECRET": SECRET,
                   "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1], "PORT": str(port),
                   "MODEL_WEIGHTS": "none", "DEVICE": "cpu", "TORCH_HOME": str(work / "torch"),
                   "SCORE_THRESHOLD": "0.3", "PRELABEL_UNCALIBRATED": "show",
                   "LOG_LEVEL": "warning"}
            backend = Backend(env, work / "backend.log").wait()
            backend.wait_model()

            storm = webhook_storm(backend.url, args.senders, args.events, 99)
            storm["training_jobs_queued"] = Queue(
                TRAINING_QUEUE, connection=Redis.from_url(redis_server.url)).count
            report["webhook_storm"] = storm

            os.environ.update(env)
            settings = Settings.from_env()
            started = time.perf_counter()
            result = jobtasks.push_back(ours, jobtasks.Context(settings))
            ours_s = time.perf_counter() - started
            report["pushback"] = {"tasks": args.tasks, "imported": result["imported"],
                                  "seconds": round(ours_s, 2),
                                  "tasks_per_s": round(args.tasks / ours_s, 1)}

            client.ml.create(project=theirs, url=backend.url, title="MLAssist",
                             auth_method="BASIC_AUTH", basic_auth_user=AUTH[0],
                             basic_auth_pass=AUTH[1], is_interactive=False)
            started = time.perf_counter()
            client.actions.create(id="retrieve_tasks_predictions", project=theirs,
                                  selected_items={"all": True, "excluded": []},
                                  request_options={"timeout_in_seconds": 600})
            theirs_s = time.perf_counter() - started
            stored = len(client.predictions.list(project=theirs))
            report["label_studio_retrieve_predictions"] = {
                "tasks": args.tasks, "stored": stored, "seconds": round(theirs_s, 2),
                "tasks_per_s": round(args.tasks / theirs_s, 1)}
            report["pushback_speedup"] = round(theirs_s / ours_s, 2)
        finally:
            if backend is not None:
                backend.stop()
            ls.stop()
            redis_server.stop()
    emit(report, args.out)


if __name__ == "__main__":
    main()
