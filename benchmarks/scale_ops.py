"""The operations `benchmarks/scale.py` times, each run in a process of its own.

Every operation takes the run's `Spec` (where Label Studio, Redis, the images and the project
are) and returns a dict with at least `items` (how many things it handled); the caller adds
seconds and peak RSS. Operations that answer users (`status`, `dashboard`) report latency
percentiles over repeats instead of one time.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth
from sync.plan import BlobInfo

CONTAINER = "seed"
DISTINCT_IMAGES = 200
URL_EXPIRES = 4_102_444_800.0  # 2100-01-01: the benchmark's URLs never need re-signing
PROBE_VERSION = "probe"
BASIC_AUTH = ("bench", "bench-pass")


@dataclass
class Spec:
    """What an operation needs to find the run's services and project."""

    url: str
    token: str
    project: int
    tasks: int
    redis_url: str
    model_dir: str
    images: str
    work: str
    new_ids: list[int] = field(default_factory=list)
    labelers: list[str] = field(default_factory=list)
    labeled_ids: list[int] = field(default_factory=list)
    window: int = 2000
    repeats: int = 20

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self)))
        return path

    @classmethod
    def load(cls, path: Path) -> Spec:
        return cls(**json.loads(path.read_text()))

    def api(self) -> LabelStudioAPI:
        return LabelStudioAPI(LabelStudioAuth(self.url, self.token), timeout=3600)

    def environment(self) -> dict[str, str]:
        """The settings the backend's jobs read (Settings.from_env)."""
        return {"LABEL_STUDIO_URL": self.url, "LABEL_STUDIO_API_KEY": self.token,
                "REDIS_URL": self.redis_url, "MODEL_DIR": self.model_dir,
                "IMAGE_CACHE_DIR": str(Path(self.work) / "image-cache"),
                "MODEL_WEIGHTS": "none", "DEVICE": "cpu",
                "TORCH_HOME": str(Path(self.work) / "torch"), "SCORE_THRESHOLD": "0.3",
                "PRELABEL_UNCALIBRATED": "show",
                "ALLOWED_IMAGE_HOSTS": self.images.removeprefix("http://"),
                "BASIC_AUTH_USER": BASIC_AUTH[0], "BASIC_AUTH_PASS": BASIC_AUTH[1],
                "LOG_LEVEL": "warning"}


def blob_name(n: int) -> str:
    return f"train2017/{n:012d}.jpg"


def image_url(images: str, n: int) -> str:
    return f"{images}/{n % DISTINCT_IMAGES}.jpg?task={n}"


def sync_data(images: str, n: int) -> dict[str, Any]:
    """A task's data exactly as the sync writes it for blob n (sync/importer.py)."""
    return {"image": image_url(images, n), "mlassist_blob": f"{CONTAINER}/{blob_name(n)}",
            "mlassist_etag": f'"0x{n:x}"', "mlassist_url_expires": URL_EXPIRES,
            "mlassist_missing": False}


class SeedListing:
    """A sync source listing blobs 0..count-1 as the build imported them (no storage)."""

    def __init__(self, count: int, images: str) -> None:
        self.count = count
        self.images = images

    def list(self) -> Any:
        for n in range(self.count):
            yield BlobInfo(CONTAINER, blob_name(n), f'"0x{n:x}"', 160_000)

    def url_for(self, name: str) -> tuple[str, float]:
        return image_url(self.images, int(name.rsplit("/", 1)[-1].split(".")[0])), URL_EXPIRES


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_s": round(statistics.median(ordered), 3),
            "p95_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
            "max_s": round(ordered[-1], 3), "repeats": len(ordered)}


def _latency(call: Callable[[], Any], repeats: int) -> dict[str, Any]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


def op_project(spec: Spec) -> dict[str, Any]:
    from backend.labelstudio.client import labeled_task_count

    return {"items": labeled_task_count(spec.api().project(spec.project))}


def _app_client(spec: Spec) -> Any:
    """The backend's Flask app (its real routes, settings from the environment) with a test
    client: what a request to `/status` or `/dashboard` costs, without the HTTP server."""
    from backend.core.settings import Settings
    from backend.http.app import create_app
    from tests.fakes import FixedDetector, holder_for

    app = create_app(Settings.from_env(), holder=holder_for(FixedDetector([])))
    return app.test_client()


def _route_latency(client: Any, path: str, repeats: int) -> dict[str, Any]:
    """The first request's seconds, then percentiles over `repeats` more."""
    def get() -> None:
        answer = client.get(path, auth=BASIC_AUTH)
        if answer.status_code != 200:
            raise SystemExit(f"{path}: HTTP {answer.status_code} {answer.get_data()[:300]!r}")

    started = time.perf_counter()
    get()
    first = time.perf_counter() - started
    return {"first_s": round(first, 3), **_latency(get, repeats)}


def op_status(spec: Spec) -> dict[str, Any]:
    """`GET /status?project=ID` through the backend's app."""
    return {"items": spec.tasks, **_route_latency(
        _app_client(spec), f"/status?project={spec.project}", spec.repeats)}


def op_dashboard(spec: Spec) -> dict[str, Any]:
    """`GET /dashboard?project=ID` through the backend's app: the first request computes the
    numbers; later ones are served from its cache while it refreshes in the background (the
    repeats run longer than its 30 s, so refreshes run meanwhile)."""
    client = _app_client(spec)
    found = _route_latency(client, f"/dashboard?project={spec.project}", 1)
    samples = []
    ends = time.monotonic() + 40
    while time.monotonic() < ends or len(samples) < spec.repeats:
        started = time.perf_counter()
        client.get(f"/dashboard?project={spec.project}", auth=BASIC_AUTH)
        samples.append(time.perf_counter() - started)
        time.sleep(0.5)
    return {"items": spec.tasks, "first_s": found["first_s"], **percentiles(samples)}


def op_reconcile(spec: Spec) -> dict[str, Any]:
    """One reconciliation tick over the project (its Redis state as the loop leaves it)."""
    from backend.core.settings import Settings
    from backend.jobs.tasks import Context, reconcile

    ctx = Context(Settings.from_env())
    ctx.queue.remember_project(spec.project)
    queued = reconcile(ctx)
    return {"items": sum(len(v) for v in queued.values()), "queued": queued}


def _importer(spec: Spec, cached: bool = True) -> Any:
    """The sync's importer as `mlassist sync` builds it (its state cached in Redis)."""
    from sync.importer import Importer
    from sync.state import StateCache

    state = StateCache.from_url(spec.redis_url, spec.project) if cached else None
    return Importer(spec.api(), spec.project, SeedListing(spec.tasks, spec.images),
                    batch=5000, state=state)


def op_sync_restart(spec: Spec) -> dict[str, Any]:
    """A sync process starting: without its cache (every task read back, as before the
    cache; also what a start after tasks were deleted does, plus writing the cache), then
    with it (the tasks above what it covers, and Label Studio's count)."""
    started = time.perf_counter()
    known = _importer(spec, cached=False).load_state()
    cold = time.perf_counter() - started
    started = time.perf_counter()
    _importer(spec).load_state()  # the benchmark's tasks came in by import: the cache is new
    rebuilt = time.perf_counter() - started
    started = time.perf_counter()
    importer = _importer(spec)
    items = importer.load_state()
    return {"items": items, "read_back": known, "without_cache_s": round(cold, 2),
            "rebuilding_cache_s": round(rebuilt, 2),
            "with_cache_s": round(time.perf_counter() - started, 2)}


def op_sync_pass(spec: Spec) -> dict[str, Any]:
    """A sync process's start from its cache, then a full pass with nothing new."""
    importer = _importer(spec)
    started = time.perf_counter()
    importer.load_state()
    start_s = time.perf_counter() - started
    started = time.perf_counter()
    report = importer.run_pass()
    changed = report.imported + report.updated + report.flagged_missing + report.resigned
    return {"items": report.listed, "changed": changed, "start_s": round(start_s, 2),
            "pass_s": round(time.perf_counter() - started, 2)}


def op_assign(spec: Spec) -> dict[str, Any]:
    """`mlassist assign` top-up: the first split, then a top-up with nothing to change."""
    from backend.tools.assign import top_up

    api = spec.api()
    started = time.perf_counter()
    first = top_up(api, spec.project, spec.labelers, 50)
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    again = top_up(api, spec.project, spec.labelers, 50)
    return {"items": first["changed_tasks"], "first_s": round(first_s, 2),
            "top_up_s": round(time.perf_counter() - started, 2),
            "top_up_changed": again["changed_tasks"]}


def op_dataset(spec: Spec) -> dict[str, Any]:
    """The training round's labeled-task read."""
    return {"items": len(spec.api().labeled_tasks(spec.project))}


def op_export_coco(spec: Spec) -> dict[str, Any]:
    from backend.cli import main

    out = Path(spec.work) / f"coco-{spec.project}.json"
    code = main(["export-coco", "--project", str(spec.project), "-o", str(out)])
    if code:
        raise SystemExit(f"export-coco exited {code}")
    return {"items": len(json.loads(out.read_text())["annotations"])}


def op_new_tasks(spec: Spec) -> dict[str, Any]:
    """The TASKS_CREATED job for the imported batch: read by pages, predict, import."""
    from backend.core.settings import Settings
    from backend.jobs.tasks import Context, predict_new_tasks

    result = predict_new_tasks(spec.project, spec.new_ids, Context(Settings.from_env()))
    return {"items": int(result.get("imported") or 0), "failed": result.get("failed")}


OPERATIONS: dict[str, Callable[[Spec], dict[str, Any]]] = {
    "project": op_project, "status": op_status, "dashboard": op_dashboard,
    "reconcile": op_reconcile, "sync_restart": op_sync_restart, "sync_pass": op_sync_pass,
    "assign": op_assign, "dataset": op_dataset, "export_coco": op_export_coco,
    "new_tasks": op_new_tasks,
}


def run(name: str, spec: Spec) -> dict[str, Any]:
    """Run one operation here, with the backend's settings in the environment."""
    os.environ.update(spec.environment())
    from benchmarks.scale_pushback import PUSHBACK_OPERATIONS

    found = {**OPERATIONS, **PUSHBACK_OPERATIONS}.get(name)
    if found is None:
        raise SystemExit(f"unknown operation {name}")
    return found(spec)
