"""Retraining-loop benchmark: webhook storms, and backlog push-back against Label Studio's own
"Retrieve predictions" on the same tasks with the same model.

Real Redis, real `mlassist serve` (gunicorn, default web settings), a real `mlassist worker`,
real Label Studio 1.23.2; task images come from a separate loopback HTTP server process.

1. Storm: `--senders` concurrent senders post `--events` ANNOTATION_CREATED webhooks in all
   (keep-alive connections, as Label Studio's sender keeps them) for a project holding 30
   labels, while a training worker runs: acknowledgement p50/p99, and how many training runs
   the storm caused (versions in the registry once the queue is empty).
2. Push-back: `--tasks` unlabeled tasks; a champion is registered and the push-back job fills
   them; then Label Studio's own "Retrieve predictions" on a copy of the same tasks, through
   the same backend and model. `--no-baseline` skips Label Studio's action (20,000 tasks).

    python benchmarks/loop.py [--tasks 2000] [--events 1000] [--senders 50] [--out FILE]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from label_studio_sdk import LabelStudio
from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.core.settings import Settings  # noqa: E402
from backend.demo.localstack import Process, free_port, wait_http  # noqa: E402
from backend.demo.scenes import make_scene  # noqa: E402
from backend.jobs import tasks as jobtasks  # noqa: E402
from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth  # noqa: E402
from backend.model.registry import LocalStore, Registry  # noqa: E402
from benchmarks.report import emit, machine, stop_cleanly_on_sigterm  # noqa: E402
from tests.labels import CONFIG, exported_tasks  # noqa: E402
from tests.labelstudio import ADMIN_TOKEN, start_label_studio  # noqa: E402
from tests.redis_server import RedisServer, redis_binary  # noqa: E402
from tests.services import Backend, mlassist_bin, untrained_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SECRET = "benchmark-secret"
AUTH = ("bench", "bench-pass")
ARCH = "ssdlite320_mobilenet_v3_large"
DISTINCT_IMAGES = 200
IMPORT_CHUNK = 5000


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def webhook_storm(port: int, senders: int, events: int, project: int) -> dict:
    """`events` webhooks from `senders` concurrent keep-alive connections."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    body = json.dumps({"action": "ANNOTATION_CREATED", "project": {"id": project},
                       "annotation": {"id": 1}}).encode()
    headers = {"Content-Type": "application/json", "X-MLAssist-Secret": SECRET}
    per_sender = [events // senders + (1 if n < events % senders else 0)
                  for n in range(senders)]
    start = threading.Barrier(senders + 1)

    def send(count: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        start.wait()
        for _ in range(count):
            started = time.perf_counter()
            connection.request("POST", "/webhook", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                errors[0] += response.status != 200
        connection.close()

    threads = [threading.Thread(target=send, args=(count,)) for count in per_sender]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return {"senders": senders, "events": len(latencies), "errors": errors[0],
            "p50_ms": round(1000 * statistics.median(latencies), 2),
            "p99_ms": percentile(latencies, 0.99), "max_ms": percentile(latencies, 1.0),
            "wall_s": round(time.perf_counter() - started, 2)}


def image_server(work: Path) -> tuple[Process, str]:
    """A separate process serving DISTINCT_IMAGES generated 640x480 JPEGs."""
    folder = work / "images"
    folder.mkdir()
    for seed in range(DISTINCT_IMAGES):
        buffer = io.BytesIO()
        make_scene(seed).image.resize((640, 480)).save(buffer, format="JPEG", quality=90)
        (folder / f"{seed}.jpg").write_bytes(buffer.getvalue())
    port = free_port()
    process = Process([sys.executable, "-m", "tests.httpserver", str(folder), str(port)],
                      dict(os.environ), work / "images.log", cwd=REPO)
    wait_http(f"http://127.0.0.1:{port}/0.jpg", 30, process)
    return process, f"http://127.0.0.1:{port}"


def import_backlog(api: LabelStudioAPI, project: int, base: str, count: int) -> None:
    for start in range(0, count, IMPORT_CHUNK):
        api.import_tasks(project, [{"data": {"image": f"{base}/{n % DISTINCT_IMAGES}.jpg?task={n}"}}
                                   for n in range(start, min(count, start + IMPORT_CHUNK))])


def register_champion(registry: Registry, project: int, checkpoint: Path) -> str:
    version = registry.reserve_version(project, ARCH)
    registry.add(project, {"version": version, "arch": ARCH,
                           "class_names": ["__background__", "circle", "square", "triangle"],
                           "metrics": {"ap50": 0.5}}, checkpoint, promote=True, keep=3)
    return version


def storm_section(args: argparse.Namespace, client: LabelStudio, api: LabelStudioAPI,
                  env: dict[str, str], backend: Backend, registry: Registry, redis_url: str,
                  work: Path) -> dict:
    project = client.projects.create(title="webhook storm", label_config=CONFIG).id
    scenes = exported_tasks(range(1, 31))
    api.import_tasks(project, [{"data": task["data"]} for task in scenes])
    # Annotations created one by one, as labelers do (imported ones are not counted as labeled
    # tasks by the project until Label Studio recounts).
    for task, scene in zip(api.task_page(project, 0, 100), scenes, strict=True):
        client.annotations.create(id=task["id"], result=scene["annotations"][0]["result"])
    worker = Process([mlassist_bin(), "worker", "--queues", "training"],
                     {**os.environ, **env, "TRAIN_STEPS": "30", "TRAIN_MIN_LABELED": "30",
                      "MIN_VALIDATION_IMAGES": "3", "LOG_LEVEL": "info"}, work / "worker.log")
    try:
        time.sleep(2)  # the worker imports torch before it listens
        storm = webhook_storm(backend.port, args.senders, args.events, project)
        redis = Redis.from_url(redis_url)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            busy = redis.llen("rq:queue:training") or redis.exists(
                f"mlassist:pending:train:{project}")
            if not busy and not redis.exists(f"mlassist:lock:train:{project}"):
                break
            time.sleep(1)
        storm["training_runs"] = len(registry.versions(project))
        storm["train_jobs_started"] = (work / "worker.log").read_text().count(
            "Successfully completed train project")
    finally:
        worker.stop()
    if storm["training_runs"] == 0:
        print((work / "worker.log").read_text()[-3000:], file=sys.stderr)
    return storm


def pushback_section(args: argparse.Namespace, client: LabelStudio, api: LabelStudioAPI,
                     env: dict[str, str], backend: Backend, registry: Registry,
                     checkpoint: Path, images: str) -> dict:
    report: dict = {}
    ours = client.projects.create(title="push-back", label_config=CONFIG).id
    started = time.perf_counter()
    import_backlog(api, ours, images, args.tasks)
    report["import_s"] = round(time.perf_counter() - started, 2)
    register_champion(registry, ours, checkpoint)
    settings = Settings.from_env()
    started = time.perf_counter()
    result = jobtasks.push_back(ours, jobtasks.Context(settings))
    ours_s = time.perf_counter() - started
    stored = api.count_tasks_with_prediction(ours, result["version"])
    report["pushback"] = {"tasks": args.tasks, "imported": result["imported"],
                          "failed": result["failed"], "with_prediction_in_ls": stored,
                          "seconds": round(ours_s, 2),
                          "tasks_per_s": round(stored / ours_s, 1),
                          "stage_seconds": result.get("stage_seconds")}
    if args.no_baseline:
        return report
    theirs = client.projects.create(title="LS retrieve predictions", label_config=CONFIG).id
    import_backlog(api, theirs, images, args.tasks)
    version = register_champion(registry, theirs, checkpoint)
    client.ml.create(project=theirs, url=backend.url, title="MLAssist",
                     auth_method="BASIC_AUTH", basic_auth_user=AUTH[0],
                     basic_auth_pass=AUTH[1], is_interactive=False)
    started = time.perf_counter()
    try:
        client.actions.create(id="retrieve_tasks_predictions", project=theirs,
                              selected_items={"all": True, "excluded": []},
                              request_options={"timeout_in_seconds": 900})
        outcome = "returned"
    except Exception as exc:  # noqa: BLE001 - Label Studio's own action may fail: report it
        outcome = f"{type(exc).__name__}: {str(exc)[:200]}"
    theirs_s = time.perf_counter() - started
    stored = api.count_tasks_with_prediction(theirs, version)
    report["label_studio_retrieve_predictions"] = {
        "tasks": args.tasks, "with_prediction_in_ls": stored, "seconds": round(theirs_s, 2),
        "tasks_per_s": round(stored / theirs_s, 1), "outcome": outcome}
    report["pushback_speedup"] = round(report["pushback"]["tasks_per_s"]
                                       / max(0.1, stored / theirs_s), 2)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=50)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-storm", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    stop_cleanly_on_sigterm()
    report: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        binary = redis_binary()
        if binary is None:
            raise SystemExit("redis-server not found (scripts/bootstrap.sh installs it)")
        redis_server = RedisServer(binary, work / "redis")
        ls = start_label_studio(work)
        pictures, images = image_server(work)
        backend = None
        try:
            client = LabelStudio(base_url=ls.url, api_key=ADMIN_TOKEN)
            api = LabelStudioAPI(LabelStudioAuth(ls.url, ADMIN_TOKEN))
            registry = Registry(LocalStore(work / "models" / "registry"), work / "cache")
            checkpoint = untrained_checkpoint(work / "m.pt", ["circle", "square", "triangle"])
            env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ADMIN_TOKEN,
                   "REDIS_URL": redis_server.url, "MODEL_DIR": str(work / "models"),
                   "IMAGE_CACHE_DIR": str(work / "image-cache"), "WEBHOOK_SECRET": SECRET,
                   "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1],
                   "MODEL_WEIGHTS": "none", "DEVICE": "cpu", "TORCH_HOME": str(work / "torch"),
                   "SCORE_THRESHOLD": "0.3", "PRELABEL_UNCALIBRATED": "show",
                   "ALLOWED_IMAGE_HOSTS": images.removeprefix("http://"),
                   "LOG_LEVEL": "warning"}
            backend = Backend({**env, "PORT": str(free_port())}, work / "backend.log").wait()
            backend.wait_model()
            report["settings"] = {"WEB_WORKERS": 1, "WEB_THREADS": 4,
                                  "INFERENCE_RUNTIME": "auto"}
            if not args.no_storm:
                report["webhook_storm"] = storm_section(args, client, api, env, backend,
                                                        registry, redis_server.url, work)
            os.environ.update(env)
            report["settings"]["PUSHBACK_BATCH"] = Settings.from_env().pushback_batch
            report.update(pushback_section(args, client, api, env, backend, registry,
                                           checkpoint, images))
        finally:
            if backend is not None:
                backend.stop()
            pictures.stop()
            ls.stop()
            redis_server.stop()
    emit(report, args.out)


if __name__ == "__main__":
    main()
