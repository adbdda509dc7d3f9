"""Interactive /predict through create_app: the body Label Studio forwards from its
interactive-annotating API, a fixed detector, images on a loopback server."""

from __future__ import annotations

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image

from backend.http.app import create_app
from backend.model.detector import DetectorHolder, ModelSpec
from tests import media
from tests.conftest import make_settings
from tests.fakes import FixedDetector, holder_for
from tests.httpserver import LoopbackServer
from tests.test_interactive import keypoint, rectangle, scene

CONFIG = ('<View><Image name="image" value="$image"/>'
          '<RectangleLabels name="label" toName="image" smart="true">'
          '<Label value="person"/><Label value="vehicle" predicted_values="car"/>'
          '</RectangleLabels>'
          '<KeyPointLabels name="kp" toName="image" smart="true" smartOnly="true">'
          '<Label value="person"/><Label value="car"/></KeyPointLabels></View>')
BOXES = [(0.1, 0.1, 0.9, 0.9, 0.8, 2),     # a big car, 64..576 x 48..432 of 640x480
         (0.25, 0.25, 0.5, 0.5, 0.4, 1)]   # a person inside it, 160..320 x 120..240


def client_for(loopback: LoopbackServer, holder: DetectorHolder) -> FlaskClient:
    settings = make_settings(LABEL_STUDIO_URL=loopback.base,
                             ALLOWED_IMAGE_HOSTS=f"127.0.0.1:{loopback.port}")
    return create_app(settings, holder=holder).test_client()


def body(url: str, regions: list[dict], tasks: int = 1) -> dict:
    """A one-task /predict as Label Studio 1.23.2 sends it for a smart tool."""
    return {"tasks": [{"id": 7 + i, "data": {"image": url}} for i in range(tasks)],
            "project": "3.1700000000", "label_config": CONFIG,
            "params": {"login": None, "password": None, "context": {"result": regions}}}


@pytest.fixture
def scene_url(loopback: LoopbackServer) -> str:
    return loopback.add("/scene.png", media.encode(Image.fromarray(scene())))


def test_a_click_gets_the_model_box_under_it(loopback: LoopbackServer, scene_url: str) -> None:
    client = client_for(loopback, holder_for(FixedDetector(BOXES)))
    # A click at (200, 180) px is in both boxes: the person is the smaller confident one.
    response = client.post("/predict", json=body(scene_url, [keypoint(31.25, 37.5, "car")]))
    assert response.status_code == 200
    (item,) = response.get_json()["results"]
    assert item["source"] == "model" and item["model_version"] == "fixed-1"
    (region,) = item["result"]
    assert region["from_name"] == "label" and region["to_name"] == "image"
    assert region["type"] == "rectanglelabels"
    value = region["value"]
    assert (value["x"], value["y"], value["width"], value["height"]) == \
        pytest.approx((25, 25, 25, 25))
    assert value["rectanglelabels"] == ["vehicle"], "the user's keypoint label, mapped"
    assert region["score"] == item["score"] == pytest.approx(0.4)
    assert (region["original_width"], region["original_height"]) == (640, 480)


def test_a_rough_box_gets_the_model_box_it_overlaps(loopback: LoopbackServer,
                                                    scene_url: str) -> None:
    client = client_for(loopback, holder_for(FixedDetector(BOXES)))
    hint = rectangle(12, 8, 80, 85, label="person")
    (item,) = client.post("/predict", json=body(scene_url, [hint])).get_json()["results"]
    value = item["result"][0]["value"]
    assert (value["x"], value["y"], value["width"], value["height"]) == \
        pytest.approx((10, 10, 80, 80))
    assert value["rectanglelabels"] == ["person"], "the label chosen, not the model's car"


def test_grabcut_answers_where_the_model_has_nothing(loopback: LoopbackServer,
                                                     scene_url: str) -> None:
    detector = FixedDetector([])
    client = client_for(loopback, holder_for(detector))
    # A rough box 170..380 x 120..330 px around the red block at 200..360 x 150..300.
    hint = rectangle(100 * 170 / 640, 25, 100 * 210 / 640, 100 * 210 / 480)
    (item,) = client.post("/predict", json=body(scene_url, [hint])).get_json()["results"]
    assert item["source"] == "grabcut"
    value = item["result"][0]["value"]
    box = (value["x"] * 6.4, value["y"] * 4.8, (value["x"] + value["width"]) * 6.4,
           (value["y"] + value["height"]) * 4.8)
    assert box == pytest.approx((200, 150, 360, 300), abs=4)
    assert item["result"][0]["score"] == 0.0
    # A second click on the same task reuses the fetched image and the detections.
    client.post("/predict", json=body(scene_url, [keypoint(75, 50)]))
    assert detector.calls == [1]
    assert len(loopback.seen["/scene.png"]) == 1


def test_a_loading_model_still_answers_with_grabcut(loopback: LoopbackServer,
                                                    scene_url: str) -> None:
    spec = ModelSpec("ssdlite320_mobilenet_v3_large", "none", "error", "base-1")
    client = client_for(loopback, DetectorHolder(spec, "cpu", 1))  # never started
    (item,) = client.post("/predict", json=body(scene_url, [keypoint(75, 50)])).get_json()[
        "results"]
    assert item["source"] == "grabcut" and item["model_version"] == "base-1"
    value = item["result"][0]["value"]
    assert value["rectanglelabels"] == ["vehicle"]
    assert (value["x"] * 6.4, value["y"] * 4.8) == pytest.approx((440, 200), abs=4)


@pytest.mark.parametrize(("context", "words"), [
    ("a click", "`params.context` must be an object"),
    ({"result": [{"type": "keypointlabels", "from_name": "kp", "to_name": "image",
                  "value": {"x": 1}}]}, "value.y must be"),
    ({"result": {"x": 1}}, "must be a list"),
])
def test_malformed_context_is_400(loopback: LoopbackServer, scene_url: str, context: object,
                                  words: str) -> None:
    client = client_for(loopback, holder_for(FixedDetector(BOXES)))
    payload = body(scene_url, [])
    payload["params"]["context"] = context
    response = client.post("/predict", json=payload)
    assert response.status_code == 400
    assert words in response.get_json()["error"]


def test_a_context_for_two_tasks_is_400(loopback: LoopbackServer, scene_url: str) -> None:
    client = client_for(loopback, holder_for(FixedDetector(BOXES)))
    response = client.post("/predict", json=body(scene_url, [keypoint(50, 50)], tasks=2))
    assert response.status_code == 400
    assert "one task; got 2" in response.get_json()["error"]


def test_task_problems_are_per_task_errors(loopback: LoopbackServer) -> None:
    client = client_for(loopback, holder_for(FixedDetector(BOXES)))
    missing = body(f"{loopback.base}/missing.png", [keypoint(50, 50)])
    (item,) = client.post("/predict", json=missing).get_json()["results"]
    assert "result" not in item and item["reason"] == "http_404"
    assert "HTTP 404" in item["error"]
    no_key = body("", [keypoint(50, 50)])
    no_key["tasks"][0]["data"] = {"picture": "x"}
    (item,) = client.post("/predict", json=no_key).get_json()["results"]
    assert item["reason"] == "no_image_key" and "'image'" in item["error"]
    other_image = body("", [{**keypoint(50, 50), "to_name": "elsewhere"}])
    (item,) = client.post("/predict", json=other_image).get_json()["results"]
    assert item["reason"] == "no_target" and 'name="elsewhere"' in item["error"]


def test_an_empty_context_is_a_plain_predict(loopback: LoopbackServer, scene_url: str) -> None:
    client = client_for(loopback, holder_for(FixedDetector(BOXES)))
    (item,) = client.post("/predict", json=body(scene_url, [])).get_json()["results"]
    assert "source" not in item
    assert [r["value"]["rectanglelabels"] for r in item["result"]] == [["vehicle"]]


def test_the_scene_is_what_the_tests_assume() -> None:
    image = scene()
    assert image.shape == (480, 640, 3)
    assert (image[200, 250] == (220, 60, 30)).all() and (image[240, 480] == (40, 200, 20)).all()
    assert np.abs(image[50, 50].astype(int) - 120).max() < 120
