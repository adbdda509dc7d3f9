"""Interactive benchmark: the latency of a smart-tool /predict (a click or a rough box) on a real
`mlassist serve` (default web settings, SSDlite320, INFERENCE_RUNTIME=auto), against
INTERACTIVE_TIME_BUDGET.

Every request is for a new task (a new 640x480 generated scene from a loopback server), so each
pays the image fetch, the decode and the forward; "repeat" clicks a second time on a task
already seen (the image and its detections are kept per task). The model is untrained, served
with INTERACTIVE_MIN_SCORE=0: where one of its random boxes fits the hint it answers (the model
path: fetch, forward, match), elsewhere GrabCut refines the hint (the fallback path: fetch,
forward, GrabCut). Latencies are reported per path that answered.

    python benchmarks/interactive.py [--requests 60] [--out results.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.demo.scenes import make_scene  # noqa: E402
from benchmarks.report import emit, machine, stop_cleanly_on_sigterm  # noqa: E402
from tests import media  # noqa: E402
from tests.httpserver import LoopbackServer  # noqa: E402
from tests.services import Backend, untrained_checkpoint  # noqa: E402

WIDTH, HEIGHT = 640, 480
WARMUP = 3
BUDGET_S = 3.0  # INTERACTIVE_TIME_BUDGET's default
CONFIG = ('<View><Image name="image" value="$image"/>'
          '<RectangleLabels name="label" toName="image" smart="true">'
          '<Label value="square"/><Label value="disc"/></RectangleLabels>'
          '<KeyPointLabels name="kp" toName="image" smart="true" smartOnly="true">'
          '<Label value="square"/><Label value="disc"/></KeyPointLabels></View>')


def hints(box: tuple[float, ...]) -> dict[str, dict]:
    """A click at the object's centre and a rough box 15 % larger, as Label Studio sends them."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    mx, my = 0.15 * (x2 - x1), 0.15 * (y2 - y1)
    common = {"to_name": "image", "original_width": WIDTH, "original_height": HEIGHT,
              "image_rotation": 0, "is_positive": True, "origin": "manual"}
    return {
        "click": {**common, "from_name": "kp", "type": "keypointlabels",
                  "value": {"x": 100 * cx / WIDTH, "y": 100 * cy / HEIGHT, "width": 0.5,
                            "keypointlabels": ["square"]}},
        "box": {**common, "from_name": "label", "type": "rectanglelabels",
                "value": {"x": 100 * (x1 - mx) / WIDTH, "y": 100 * (y1 - my) / HEIGHT,
                          "width": 100 * (x2 - x1 + 2 * mx) / WIDTH,
                          "height": 100 * (y2 - y1 + 2 * my) / HEIGHT, "rotation": 0,
                          "rectanglelabels": ["square"]}},
    }


def ask(backend: Backend, task: int, url: str, region: dict) -> tuple[float, str]:
    body = {"tasks": [{"id": task, "data": {"image": url}}], "project": "1.1",
            "label_config": CONFIG, "params": {"context": {"result": [region]}}}
    started = time.perf_counter()
    response = requests.post(f"{backend.url}/predict", json=body, timeout=100)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.json()["results"][0].get("source", "error")


def summary(samples: list[tuple[float, str]], budget: float) -> dict:
    """Percentiles per path that answered (model or grabcut), and how many met the budget."""
    out: dict = {}
    for source in sorted({source for _, source in samples}):
        ordered = sorted(elapsed for elapsed, found in samples if found == source)
        out[source] = {
            "requests": len(ordered),
            "p50_ms": round(1000 * statistics.median(ordered), 1),
            "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
            "max_ms": round(1000 * ordered[-1], 1),
            "within_budget": sum(1 for elapsed in ordered if elapsed <= budget)}
    return out


def measure(backend: Backend, images: LoopbackServer, kind: str, count: int,
            first_task: int) -> dict[str, list[tuple[float, str]]]:
    """`count` hints of one kind on new tasks, each asked twice (new task, then repeat)."""
    fresh: list[tuple[float, str]] = []
    repeat: list[tuple[float, str]] = []
    for i in range(WARMUP + count):
        task = first_task + i
        scene = make_scene(task, WIDTH, HEIGHT)
        url = images.add(f"/{task}.png", media.encode(scene.image))
        hint = hints(scene.boxes[0])[kind]
        first = ask(backend, task, url, hint)
        second = ask(backend, task, url, hint)
        if i >= WARMUP:
            fresh.append(first)
            repeat.append(second)
    return {"fresh": fresh, "repeat": repeat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    stop_cleanly_on_sigterm()
    with tempfile.TemporaryDirectory() as tmp, LoopbackServer() as images:
        work = Path(tmp)
        checkpoint = untrained_checkpoint(work / "model.pt", ["square", "disc"])
        backend = Backend({"LABEL_STUDIO_URL": images.base, "LABEL_STUDIO_API_KEY": "unused",
                           "MODEL_WEIGHTS": str(checkpoint), "INTERACTIVE_MIN_SCORE": "0",
                           "ALLOWED_IMAGE_HOSTS": f"127.0.0.1:{images.port}"},
                          work / "backend.log").wait()
        try:
            backend.wait_model()
            report: dict = {"machine": machine(), "image": f"{WIDTH}x{HEIGHT}",
                            "interactive_time_budget_s": BUDGET_S}
            for offset, kind in enumerate(("click", "box")):
                runs = measure(backend, images, kind, args.requests, 100_000 * offset)
                report[kind] = {name: summary(samples, BUDGET_S)
                                for name, samples in runs.items()}
        finally:
            backend.stop()
    emit(report, args.out)


if __name__ == "__main__":
    main()
