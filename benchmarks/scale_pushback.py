"""The serving side of `benchmarks/scale.py`: push-back over a window of the backlog against
the bare forward over the same images (the ceiling), and what each of Label Studio's ways of
storing a prediction costs per call at the project's size."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from benchmarks.scale_ops import PROBE_VERSION, Spec

REPEATS = 3


def _window_start(spec: Spec, api: Any) -> int:
    """The id after which the last `window` unlabeled tasks of the project start."""
    query = {"filters": {"conjunction": "and", "items": [
        {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number",
         "value": 0}]}, "ordering": ["-tasks:id"]}
    found = api._call("GET", "/api/tasks", params={
        "project": str(spec.project), "page": "1", "page_size": str(spec.window),
        "fields": "task_only", "query": json.dumps(query)})
    tasks = found.get("tasks") if isinstance(found, dict) else []
    ids = [int(t["id"]) for t in tasks or []]
    return min(ids) - 1 if ids else 0


def _pids(marker: str) -> list[int]:
    """Processes whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of the processes so far (their threads included)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return total / os.sysconf("SC_CLK_TCK")


class CPUClock:
    """CPU seconds spent meanwhile by this process, Label Studio and the image server: who
    uses the 2 cores while the push-back runs."""

    def __init__(self) -> None:
        self.groups = {"job": [os.getpid()], "label_studio": _pids("label-studio start"),
                       "image_server": _pids("tests.httpserver")}
        self.start = {name: _cpu_s(pids) for name, pids in self.groups.items()}

    def spent(self) -> dict[str, float]:
        return {name: round(_cpu_s(pids) - self.start[name], 1)
                for name, pids in self.groups.items()}


def op_pushback(spec: Spec) -> dict[str, Any]:
    """The push-back job over the last `window` unlabeled tasks (its cursor set before them)."""
    from backend.core.settings import Settings
    from backend.jobs.tasks import Context, push_back

    ctx = Context(Settings.from_env())
    champion = ctx.registry.champion(spec.project)
    if champion is None:
        raise SystemExit("no champion registered")
    version = str(champion["version"])
    start = _window_start(spec, ctx.api)
    ctx.queue.set_cursor(spec.project, version, start)
    cpu = CPUClock()
    started = time.perf_counter()
    result = push_back(spec.project, ctx)
    seconds = time.perf_counter() - started
    spent = cpu.spent()
    imported = int(result.get("imported") or 0)
    stages = result.get("stage_seconds") or {}
    # The walk's own rate (the model loaded and exported to ONNX Runtime beforehand, as the
    # ceiling's forward is), and the whole job's.
    return {"items": imported, "failed": result.get("failed"),
            "tasks_per_s": round(imported / max(stages.get("walk", seconds), 1e-3), 1),
            "job_tasks_per_s": round(imported / seconds, 1), "window_after_id": start,
            "stage_seconds": stages, "cpu_seconds": spent,
            "cpu_ms_per_task": {name: round(1000 * value / max(imported, 1), 1)
                                for name, value in spent.items()}}


def op_pushback_all(spec: Spec) -> dict[str, Any]:
    """Exactly once at full size: the push-back job over every unlabeled task left, its model
    replaced by one that answers at once with a fixed box (the walk, fetches, imports and
    cursor are the job's own; the real model's rate is what `pushback` measures on a window,
    and a whole 118,000-task backlog at that rate takes over an hour on 2 cores)."""
    from unittest import mock

    from backend.core.settings import Settings
    from backend.jobs.tasks import Context, push_back
    from tests.fakes import FixedDetector

    ctx = Context(Settings.from_env())
    champion = ctx.registry.champion(spec.project)
    if champion is None:
        raise SystemExit("no champion registered")
    stand_in = FixedDetector([(0.1, 0.1, 0.5, 0.5, 0.9, 1)],
                             ["__background__", "circle", "square", "triangle"],
                             str(champion["version"]))
    started = time.perf_counter()
    with mock.patch("backend.model.detector.checkpoint_detector", lambda *a, **k: stand_in):
        result = push_back(spec.project, ctx)
    seconds = time.perf_counter() - started
    imported = int(result.get("imported") or 0)
    return {"items": imported, "failed": result.get("failed"),
            "tasks_per_s": round(imported / seconds, 1),
            "stage_seconds": result.get("stage_seconds")}


def op_forward(spec: Spec) -> dict[str, Any]:
    """The ceiling: the champion's batched forward alone over the window's images (fetched and
    decoded beforehand, not timed), in the same batches as the push-back's."""
    from PIL import Image

    from backend.core.settings import Settings
    from backend.jobs.pushback import PUSHBACK_FORWARD_BATCH
    from backend.model.detector import checkpoint_detector
    from backend.model.registry import open_registry
    from benchmarks.scale_ops import DISTINCT_IMAGES

    settings = Settings.from_env()
    registry = open_registry(settings)
    champion = registry.champion(spec.project)
    if champion is None:
        raise SystemExit("no champion registered")
    version = str(champion["version"])
    detector = checkpoint_detector(registry.checkpoint_path(spec.project, version), version,
                                   "cpu", settings.inference_runtime)
    session = requests.Session()
    pictures = [Image.open(io.BytesIO(session.get(f"{spec.images}/{n}.jpg", timeout=30).content))
                .convert("RGB") for n in range(DISTINCT_IMAGES)]
    batch = max(settings.predict_batch_size, PUSHBACK_FORWARD_BATCH)
    detector.predict(pictures[:batch], batch_size=batch)  # warm-up
    cpu = CPUClock()
    started = time.perf_counter()
    done = 0
    while done < spec.window:
        count = min(batch, spec.window - done)
        chunk = [pictures[(done + i) % DISTINCT_IMAGES] for i in range(count)]
        detector.predict(chunk, batch_size=batch)
        done += count
    seconds = time.perf_counter() - started
    job_cpu = cpu.spent()["job"]
    return {"items": done, "tasks_per_s": round(done / seconds, 1),
            "runtime": getattr(detector, "runtime", None), "cpu_seconds": job_cpu,
            "cpu_ms_per_task": round(1000 * job_cpu / done, 1)}


def _timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return round(time.perf_counter() - started, 3)


def op_store_cost(spec: Spec) -> dict[str, Any]:
    """Seconds per call of each way to store predictions, at this project size (probe
    predictions of another version, on labeled tasks, so the champion's count is untouched):
    bulk prediction import of 1, 100 and 1,000; one prediction per POST /api/predictions; and
    tasks imported with their predictions (new tasks, 100 per call)."""
    api = spec.api()
    targets = spec.labeled_ids
    result: dict[str, Any] = {}

    def bulk(count: int, offset: int) -> None:
        api.import_predictions(spec.project, [
            {"task": targets[(offset + i) % len(targets)], "result": [], "score": 0.5,
             "model_version": PROBE_VERSION} for i in range(count)])

    stored = 0
    for count in (1, 100, 1000):
        times = [_timed(lambda c=count: bulk(c, 0))]
        if times[0] < 10:  # a call that takes longer is not repeated: its noise is small
            times += [_timed(lambda c=count, r=r: bulk(c, r * c)) for r in range(1, REPEATS)]
        stored += count * len(times)
        result[f"bulk_import_{count}_s"] = min(times)
        result[f"bulk_import_{count}_per_prediction_ms"] = round(1000 * min(times) / count, 2)

    def single(task: int) -> None:
        api._call("POST", "/api/predictions", body={
            "task": task, "result": [], "score": 0.5, "model_version": PROBE_VERSION})

    times = [_timed(lambda t=t: single(t)) for t in targets[:20]]
    stored += len(times)
    result["single_create_s"] = round(sorted(times)[len(times) // 2], 3)
    with ThreadPoolExecutor(4) as pool:
        started = time.perf_counter()
        list(pool.map(single, targets[:100]))
        result["single_create_4_threads_per_s"] = round(100 / (time.perf_counter() - started), 1)
    stored += 100
    def with_predictions(round_: int) -> None:
        api.import_tasks(spec.project, [
            {"data": {"image": f"{spec.images}/0.jpg?probe={round_}-{i}"},
             "predictions": [{"result": [], "score": 0.5, "model_version": PROBE_VERSION}]}
            for i in range(100)])

    result["task_import_with_predictions_100_s"] = min(
        _timed(lambda r=r: with_predictions(r)) for r in range(REPEATS))
    result["probe_predictions_stored"] = stored
    result["probe_tasks_created"] = 100 * REPEATS
    return {"items": stored, **result}


def op_list_cost(spec: Spec) -> dict[str, Any]:
    """Seconds of one page of 1,000 unlabeled tasks from the middle of the project, as the
    push-back lists them (every field, predictions included) and with Label Studio's default
    fields; and the filtered count `/status` makes of the champion's predictions."""
    api = spec.api()
    middle = spec.tasks // 2
    unlabeled = {"filter": "filter:tasks:total_annotations", "operator": "equal",
                 "type": "Number", "value": 0}
    after = {"filter": "filter:tasks:id", "operator": "greater", "type": "Number",
             "value": middle}

    without = {"filter": "filter:tasks:predictions_model_versions", "operator": "not_contains",
               "type": "List", "value": ["no-such-version"]}

    def page(fields: str | None, *extra: dict) -> None:
        params = {"project": str(spec.project), "page": "1", "page_size": "1000",
                  "resolve_uri": "false", "query": json.dumps({"filters": {
                      "conjunction": "and", "items": [after, unlabeled, *extra]},
                      "ordering": ["tasks:id"]})}
        if fields:
            params["fields"] = fields
        api._call("GET", "/api/tasks", params=params)

    return {"items": 1000,
            "page_all_fields_s": min(_timed(lambda: page("all")) for _ in range(REPEATS)),
            "page_default_fields_s": min(_timed(lambda: page(None)) for _ in range(REPEATS)),
            "page_default_without_version_s": min(_timed(lambda: page(None, without))
                                                  for _ in range(REPEATS)),
            "count_with_version_s": min(_timed(lambda: api.count_tasks_with_prediction(
                spec.project, "no-such-version")) for _ in range(REPEATS))}


PUSHBACK_OPERATIONS: dict[str, Callable[[Spec], dict[str, Any]]] = {
    "pushback": op_pushback, "pushback_all": op_pushback_all, "forward": op_forward,
    "store_cost": op_store_cost,
    "list_cost": op_list_cost,
}
