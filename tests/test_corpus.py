"""The bad-input corpus (tests/corpus/manifest.json) against a real `mlassist serve`.

Every malformed or hostile input must get a clear 4xx JSON `{"error": ...}`, or a per-task error
item (no `result`, an `error` naming the problem), never a 5xx or a traceback; the server must
answer /health after each one, keep its worker (no crash, no restart) and its memory bounded.
The `training-*` entries go through training's annotation parser, where coordinates are read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from backend.demo.localstack import descendants
from backend.labelstudio.label_config import parse_label_config
from backend.media.images import LoadedImage
from backend.model.checkpoint import BACKGROUND
from backend.model.dataset import DatasetReport, resolve_boxes, samples_from_tasks
from tests import media, reliability
from tests.corpus.generate import build
from tests.httpserver import LoopbackServer
from tests.services import Backend, untrained_checkpoint

CORPUS = Path(__file__).resolve().parent / "corpus"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())["entries"]
AUTH = ("ml", "corpus-pass")
MAX_REQUEST_BYTES = 2 * 2 ** 20
MAX_IMAGE_BYTES = 2 ** 20
RSS_GROWTH_LIMIT_KB = 150 * 1024
CONFIG = ('<View><Image name="image" value="$image"/>'
          '<RectangleLabels name="label" toName="image" model_score_threshold="0.0">'
          '<Label value="person"/><Label value="car"/></RectangleLabels></View>')
SERVED = [entry for entry in MANIFEST if entry["endpoint"] != "training"]
PARSED = [entry for entry in MANIFEST if entry["endpoint"] == "training"]


@pytest.fixture(scope="module")
def images() -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        # What a fetch that slipped past the checks would find: a real image, a DTD, an include.
        server.add("/corpus/secret", media.png(64, 64, 9))
        server.add("/corpus/good.png", media.png(160, 120, 4))
        server.add("/corpus/evil.dtd", b'<!ENTITY leaked "leaked">',
                   headers={"Content-Type": "application/xml-dtd"})
        server.add("/corpus/include.xml",
                   b'<RectangleLabels name="l" toName="image"><Label value="car"/>'
                   b"</RectangleLabels>", headers={"Content-Type": "application/xml"})
        yield server


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, images: LoopbackServer,
            redis_server) -> Iterator[Backend]:
    tmp = tmp_path_factory.mktemp("corpus")
    checkpoint = untrained_checkpoint(tmp / "model.pt", ["person", "car"])
    server = Backend({
        "LABEL_STUDIO_URL": "http://127.0.0.1:9",  # nothing listens: Label Studio paths fail
        "LABEL_STUDIO_API_KEY": "legacy-token-corpus",
        "MODEL_WEIGHTS": str(checkpoint), "MODEL_DIR": str(tmp / "models"),
        "INFERENCE_RUNTIME": "torch", "TORCH_THREADS": "2",
        "ALLOWED_IMAGE_HOSTS": f"127.0.0.1:{images.port}",
        "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1],
        "MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES), "MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
        "IMAGE_FETCH_TIMEOUT": "5", "PREDICT_TIME_BUDGET": "30",
        "REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/6",
    }, tmp / "backend.log").wait().wait_model()
    yield server
    server.stop()


def worker_rss_kb(backend: Backend) -> dict[int, int]:
    """Resident memory (kB) of each gunicorn worker below the `mlassist serve` process."""
    found = {}
    for pid in descendants(backend.pid):
        status = Path(f"/proc/{pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        if match:
            found[pid] = int(match.group(1))
    return found


@pytest.fixture(scope="module")
def baseline(backend: Backend, images: LoopbackServer) -> dict[int, int]:
    """Worker memory after one good prediction (the model's first forward allocates)."""
    response = post(backend, "/predict", json=predict_body(
        {"id": 1, "data": {"image": f"{images.base}/corpus/good.png"}}))
    assert "result" in response.json()["results"][0], response.text
    return worker_rss_kb(backend)


def post(backend: Backend, path: str, **kwargs: Any) -> requests.Response:
    return requests.post(f"{backend.url}{path}", auth=AUTH, timeout=60, **kwargs)


def placeholders(value: Any, images_base: str) -> Any:
    port = images_base.rsplit(":", 1)[1]
    if isinstance(value, str):
        return value.replace("@IMAGES@", images_base).replace("@PORT@", port)
    if isinstance(value, list):
        return [placeholders(item, images_base) for item in value]
    if isinstance(value, dict):
        return {key: placeholders(item, images_base) for key, item in value.items()}
    return value


def predict_body(task: dict, config: str = CONFIG) -> dict:
    return {"tasks": [task], "label_config": config, "project": "1.1"}


def send(entry: dict, backend: Backend, images: LoopbackServer) -> requests.Response:
    """Send one corpus entry the way its `input` says."""
    name, given = entry["name"], entry["input"]
    generated = {key: build(value, MAX_REQUEST_BYTES, MAX_IMAGE_BYTES)
                 for key, value in given.items() if key.endswith("_generated")}
    good = {"id": 1, "data": {"image": f"{images.base}/corpus/good.png"}}
    if "image_file" in given or "image_generated" in given:
        data = generated.get("image_generated") or (CORPUS / given["image_file"]).read_bytes()
        url = images.add(f"/corpus/{name}", data, headers={"Content-Type": "image/png"},
                         send_length=given.get("send_length", True))
        return post(backend, "/predict", json=predict_body({"id": 1, "data": {"image": url}}))
    if "image_ref" in given or "image_ref_generated" in given:
        reference = generated.get("image_ref_generated",
                                  placeholders(given.get("image_ref"), images.base))
        task: dict = {"data": {"image": reference}}
        if given.get("task_id", 1) is not None:
            task["id"] = 1
        return post(backend, "/predict", json=predict_body(task))
    if "redirect" in given:
        location = placeholders(given["redirect"]["location"], images.base)
        url = images.add(f"/corpus/{name}", b"", status=given["redirect"]["status"],
                         headers={"Location": location})
        return post(backend, "/predict", json=predict_body({"id": 1, "data": {"image": url}}))
    if "schema_file" in given or "schema_generated" in given:
        schema = generated.get("schema_generated") or placeholders(
            (CORPUS / given["schema_file"]).read_text(), images.base)
        return post(backend, "/setup", json={"project": "7.1", "schema": schema})
    if "label_config_file" in given:
        config = placeholders((CORPUS / given["label_config_file"]).read_text(), images.base)
        return post(backend, "/predict", json=predict_body(good, config))
    if "body_file" in given:
        raw = (CORPUS / given["body_file"]).read_bytes().replace(b"@IMAGES@",
                                                                 images.base.encode())
        return post(backend, entry["endpoint"], data=raw,
                    headers={"Content-Type": given["content_type"]})
    if "body_generated" in given:
        raw = generated["body_generated"]
        assert isinstance(raw, bytes)
        body: Any = (raw[i:i + 65536] for i in range(0, len(raw), 65536)) \
            if given.get("chunked") else raw
        return post(backend, entry["endpoint"], data=body,
                    headers={"Content-Type": "application/json"})
    if "methods" in given:
        response = None
        for index in range(given["methods"]):
            response = requests.request(f"FUZZ{index:04d}", f"{backend.url}/predict", timeout=10)
            check_clean(response)
            assert response.status_code == entry["expect"]["status"], response.text
        assert response is not None
        metrics = requests.get(f"{backend.url}/metrics", auth=AUTH, timeout=10).text
        assert "FUZZ" not in metrics, "one metrics series per invented method"
        return response
    raise AssertionError(f"{name}: unknown input {sorted(given)}")


def check_clean(response: requests.Response) -> Any:
    """No 5xx, no traceback, strict JSON (Label Studio refuses NaN), errors named."""
    assert response.status_code < 500, (response.status_code, response.text[:300])
    assert b"Traceback" not in response.content
    assert response.headers.get("Content-Type", "").startswith("application/json"), \
        response.headers.get("Content-Type")

    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON constant {token}")

    body = json.loads(response.content, parse_constant=refuse)
    if response.status_code >= 400:
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]
    return body


def check_expected(entry: dict, response: requests.Response, images: LoopbackServer) -> None:
    expect = entry["expect"]
    body = check_clean(response)
    if "status" in expect:
        assert response.status_code == expect["status"], (response.status_code, body)
    if "error" in expect:
        assert re.search(expect["error"], body["error"]), body["error"]
    if "task_error" in expect:
        assert response.status_code == 200, body
        assert body["results"], body
        for item in body["results"]:
            assert "result" not in item, item
            assert re.search(expect["task_error"], item["error"]), item["error"]
            assert "internal error" not in item["error"], item["error"]
    if expect.get("task_result"):
        assert response.status_code == 200, body
        item = body["results"][0]
        assert isinstance(item.get("result"), list) and "error" not in item, item
        if "boxes" in expect:
            assert len(item["result"]) == expect["boxes"], item
    for key, value in expect.get("json", {}).items():
        assert body.get(key) == value, (key, body)
    if entry["name"] == "webhook-action-1mb":
        assert len(body["action"]) <= 64
    for path in expect.get("never_fetched", []):
        assert path not in images.seen, f"{entry['name']}: the backend requested {path}"


@pytest.mark.parametrize("entry", SERVED, ids=[entry["name"] for entry in SERVED])
def test_served_input(entry: dict, backend: Backend, images: LoopbackServer,
                      baseline: dict[int, int]) -> None:
    response = send(entry, backend, images)
    check_expected(entry, response, images)
    health = requests.get(f"{backend.url}/health", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "UP"
    reliability.inputs_tried(1)


def test_server_kept_its_worker_and_memory(backend: Backend, baseline: dict[int, int],
                                           request: pytest.FixtureRequest) -> None:
    after = worker_rss_kb(backend)
    assert set(after) == set(baseline), "a worker died or was restarted during the corpus"
    growth = sum(after.values()) - sum(baseline.values())
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(f"corpus: {len(SERVED)} inputs served, worker RSS "
                                f"{sum(baseline.values()) // 1024} -> "
                                f"{sum(after.values()) // 1024} MB")
    assert growth < RSS_GROWTH_LIMIT_KB, f"worker RSS grew {growth} kB over the corpus"
    log = Path(backend.log).read_text(errors="replace")
    assert "unhandled error" not in log and "unexpected error" not in log, log[-3000:]
    assert "legacy-token-corpus" not in log and AUTH[1] not in log


REGIONS = json.loads((CORPUS / "annotations" / "regions.json").read_text())  # NaN allowed


@pytest.mark.parametrize("entry", PARSED, ids=[entry["name"] for entry in PARSED])
def test_parsed_annotation(entry: dict) -> None:
    value = REGIONS[entry["input"]["region"].split("#", 1)[1]]
    task = {"id": 5, "data": {"image": "http://127.0.0.1:1/a.png"},
            "annotations": [{"id": 9, "result": [{"type": "rectanglelabels", "from_name": "label",
                                                  "to_name": "image", "value": value}]}]}
    report = DatasetReport()
    samples = samples_from_tasks([task], parse_label_config(CONFIG),
                                 [BACKGROUND, "person", "car"], 0.0, report)
    for sample in samples:
        resolve_boxes(sample, LoadedImage(Image.new("RGB", (200, 100))), report)
    expect = entry["expect"]
    if "skipped" in expect:
        assert dict(report.skipped) == {expect["skipped"]: 1}
        assert report.boxes == 0
    else:
        assert not report.skipped
        np.testing.assert_allclose(samples[0].boxes, [expect["box"]], atol=1e-4)
    reliability.inputs_tried(1)
