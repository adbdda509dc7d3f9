"""The batch guarantees against a real `mlassist serve` and a real (untrained) detector:
each broken task gets a clear per-task error, every good task still gets boxes, and the
server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests import media
from tests.httpserver import LoopbackServer
from tests.services import Backend, untrained_checkpoint

AUTH = ("ml", "s3cret-pass")
CONFIG = ('<View><Image name="image" value="$image"/>'
          '<RectangleLabels name="label" toName="image" model_score_threshold="0.05">'
          '<Label value="person"/><Label value="car"/></RectangleLabels></View>')


@pytest.fixture(scope="module")
def images() -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        yield server


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory,
            images: LoopbackServer) -> Iterator[Backend]:
    tmp = tmp_path_factory.mktemp("backend")
    checkpoint = untrained_checkpoint(tmp / "model.pt", ["person", "car"])
    server = Backend({
        "LABEL_STUDIO_URL": "http://127.0.0.1:9",  # nothing listens: LS paths fail cleanly
        "LABEL_STUDIO_API_KEY": "legacy-token-abc",
        "MODEL_WEIGHTS": str(checkpoint),
        "ALLOWED_IMAGE_HOSTS": f"127.0.0.1:{images.port}",
        "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1],
        "TORCH_THREADS": "2",
    }, tmp / "backend.log").wait().wait_model()
    yield server
    server.stop()


def test_broken_tasks_fail_alone(backend: Backend, images: LoopbackServer) -> None:
    with LoopbackServer() as elsewhere:
        cases = {
            "good-png": images.add("/good.png", media.png(320, 240, 1)),
            "no-image-key": None,
            "zero-bytes": images.add("/empty.jpg", b"", headers={"Content-Type": "image/jpeg"}),
            "truncated-jpeg": images.add("/trunc.jpg", media.truncated_jpeg()),
            "cmyk-jpeg": images.add("/cmyk.jpg", media.cmyk_jpeg(200, 150)),
            "png16": images.add("/p16.png", media.png16(200, 150)),
            "rgba-png": images.add("/rgba.png", media.rgba_png(200, 150)),
            "exif-rotated": images.add("/exif.jpg", media.exif_rotated_jpeg(300, 100)),
            "huge-png": images.add("/huge.png", media.huge_png(20_000)),
            "disallowed-host": elsewhere.add("/x.png", media.png(50, 50)),
            "not-an-image": images.add("/x.txt", b"hello, I am text"),
            "good-jpeg": images.add("/good.jpg", media.jpeg(640, 480, 2)),
        }
        tasks = [{"id": i + 1, "data": {"image": url} if url else {"picture": "x"}}
                 for i, url in enumerate(cases.values())]
        response = requests.post(f"{backend.url}/predict", auth=AUTH, timeout=100,
                                 json={"tasks": tasks, "label_config": CONFIG,
                                       "project": "1.1"})
        assert "/x.png" not in elsewhere.seen
    assert response.status_code == 200
    results = dict(zip(cases, response.json()["results"], strict=True))

    predicted = {"good-png", "cmyk-jpeg", "png16", "rgba-png", "exif-rotated", "good-jpeg"}
    for name, item in results.items():
        if name in predicted:
            assert "error" not in item, (name, item)
            assert item["result"], f"{name}: a good image gets boxes"
            for region in item["result"]:
                value = region["value"]
                assert value["rectanglelabels"][0] in ("person", "car")
                assert value["x"] >= 0 and value["x"] + value["width"] <= 100 + 1e-6
                assert value["y"] >= 0 and value["y"] + value["height"] <= 100 + 1e-6
        else:
            assert "result" not in item, name
            assert item["error"].startswith(f"task {list(cases).index(name) + 1}:"), name
    exif = results["exif-rotated"]["result"][0]
    assert (exif["original_width"], exif["original_height"]) == (100, 300)
    assert "no 'image' in its data" in results["no-image-key"]["error"]
    assert "0 bytes" in results["zero-bytes"]["error"]
    assert "truncated" in results["truncated-jpeg"]["error"]
    assert "MAX_IMAGE_PIXELS" in results["huge-png"]["error"]
    assert "ALLOWED_IMAGE_HOSTS" in results["disallowed-host"]["error"]
    assert "not an image" in results["not-an-image"]["error"]

    # Still serving, and nothing secret in the log.
    assert requests.get(f"{backend.url}/health", timeout=5).json()["status"] == "UP"
    log = Path(backend.log).read_text()
    assert "legacy-token-abc" not in log and AUTH[1] not in log


def test_label_studio_path_while_label_studio_is_down(backend: Backend) -> None:
    tasks = [{"id": 3, "data": {"image": "/data/upload/1/a.png"}},
             {"id": 4, "data": {"image": "azure-blob://c/a.png"}}]
    response = requests.post(f"{backend.url}/predict", auth=AUTH, timeout=60,
                             json={"tasks": tasks, "label_config": CONFIG})
    items = response.json()["results"]
    assert [("could not fetch" in item["error"]) for item in items] == [True, True]


def test_malformed_json_gets_400(backend: Backend) -> None:
    response = requests.post(f"{backend.url}/predict", auth=AUTH, timeout=10, data=b"{oops",
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"error": "request body is not valid JSON"}
