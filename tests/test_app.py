from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from backend.http.app import create_app
from tests import media
from tests.conftest import make_settings
from tests.fakes import FixedDetector, holder_for
from tests.httpserver import LoopbackServer

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "label-studio-1.23.2"
CONFIG = ('<View><Image name="image" value="$image"/>'
          '<RectangleLabels name="label" toName="image">'
          '<Label value="person"/><Label value="vehicle" predicted_values="car"/>'
          '</RectangleLabels></View>')
BOXES = [
    (0.1, 0.2, 0.5, 0.6, 0.9, 1),    # person, kept
    (0.5, 0.5, 1.2, 1.1, 0.7, 2),    # car -> vehicle, clipped to the image
    (0.0, 0.0, 0.2, 0.2, 0.3, 2),    # under the 0.5 threshold
    (0.3, 0.3, 0.3, 0.9, 0.95, 1),   # zero width: dropped
]


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def detector() -> FixedDetector:
    return FixedDetector(BOXES)


@pytest.fixture
def client(loopback: LoopbackServer, detector: FixedDetector) -> FlaskClient:
    settings = make_settings(LABEL_STUDIO_URL=loopback.base,
                             ALLOWED_IMAGE_HOSTS=f"127.0.0.1:{loopback.port}")
    return create_app(settings, holder=holder_for(detector)).test_client()


def predict_body(urls: list[str], config: str = CONFIG) -> dict:
    return {"tasks": [{"id": i + 1, "data": {"image": url}} for i, url in enumerate(urls)],
            "label_config": config, "project": "1.1700000000"}


def test_health_is_unauthenticated_and_cheap(loopback: LoopbackServer) -> None:
    settings = make_settings(LABEL_STUDIO_URL=loopback.base, BASIC_AUTH_USER="u",
                             BASIC_AUTH_PASS="p")
    client = create_app(settings, holder=holder_for(FixedDetector(BOXES))).test_client()
    assert client.get("/health").get_json() == {
        "status": "UP", "model_loaded": True, "model_version": "fixed-1", "runtime": "fixed"}


def test_basic_auth_guards_everything_else(loopback: LoopbackServer) -> None:
    settings = make_settings(LABEL_STUDIO_URL=loopback.base, BASIC_AUTH_USER="u",
                             BASIC_AUTH_PASS="p")
    client = create_app(settings, holder=holder_for(FixedDetector(BOXES))).test_client()
    good = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"u:wrong").decode()}
    for method, path in (("post", "/setup"), ("post", "/predict"), ("get", "/versions"),
                         ("post", "/webhook"), ("get", "/metrics")):
        for headers in ({}, bad):
            response = getattr(client, method)(path, headers=headers, json={})
            assert response.status_code == 401, path
            assert "Basic auth" in response.get_json()["error"]
            assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert client.get("/versions", headers=good).get_json() == {"versions": ["fixed-1"]}


def test_setup_answers_version_and_coverage(client: FlaskClient) -> None:
    body = fixture("request-setup.json")["json"]
    body["schema"] = CONFIG
    answer = client.post("/setup", json=body).get_json()
    assert answer == {"model_version": "fixed-1", "labels_covered": ["person", "vehicle"],
                      "labels_uncovered": []}


@pytest.mark.parametrize(("schema", "words"), [
    ('<View><Image name="image" value="$image"/></View>', "no <RectangleLabels>"),
    ('<View><RectangleLabels name="l" toName="t"><Label value="a"/></RectangleLabels></View>',
     "no <Image"),
])
def test_setup_rejects_unservable_projects(client: FlaskClient, schema: str, words: str) -> None:
    response = client.post("/setup", json={"project": "2.1", "schema": schema})
    assert response.status_code == 422
    assert words in response.get_json()["error"]


def test_predict_converts_boxes(client: FlaskClient, loopback: LoopbackServer) -> None:
    url = loopback.add("/a.png", media.png(200, 100))
    results = client.post("/predict", json=predict_body([url])).get_json()["results"]
    assert len(results) == 1
    item = results[0]
    assert item["model_version"] == "fixed-1"
    values = [(r["value"]["rectanglelabels"], r["score"]) for r in item["result"]]
    assert values == [(["person"], pytest.approx(0.9)), (["vehicle"], pytest.approx(0.7))]
    person, vehicle = (r["value"] for r in item["result"])
    # 0.1..0.5 x 0.2..0.6 of a 200x100 image: x 10 %, y 20 %, 40 % x 40 %.
    assert (person["x"], person["y"], person["width"], person["height"]) == \
        pytest.approx((10, 20, 40, 40))
    # 0.5..1.2 x 0.5..1.1 clipped at the image edge: 50 % x 50 %.
    assert (vehicle["x"], vehicle["y"], vehicle["width"], vehicle["height"]) == \
        pytest.approx((50, 50, 50, 50))
    assert item["result"][0]["original_width"] == 200
    assert item["result"][0]["original_height"] == 100
    assert item["score"] == pytest.approx(0.8)


def test_tag_threshold_overrides_the_default(client: FlaskClient,
                                             loopback: LoopbackServer) -> None:
    url = loopback.add("/a.png", media.png(200, 100))
    config = CONFIG.replace('toName="image"', 'toName="image" model_score_threshold="0.8"')
    item = client.post("/predict", json=predict_body([url], config)).get_json()["results"][0]
    assert [r["value"]["rectanglelabels"] for r in item["result"]] == [["person"]]


def test_predict_uses_config_remembered_from_setup(client: FlaskClient,
                                                   loopback: LoopbackServer) -> None:
    url = loopback.add("/a.png", media.png(50, 50))
    client.post("/setup", json={"project": "9.1", "schema": CONFIG})
    body = predict_body([url])
    body.pop("label_config")
    body["project"] = "9.1"
    item = client.post("/predict", json=body).get_json()["results"][0]
    assert len(item["result"]) == 2


def test_recorded_label_studio_predict_request(client: FlaskClient, loopback: LoopbackServer,
                                               detector: FixedDetector) -> None:
    body = fixture("request-predict.json")["json"]
    for index, task in enumerate(body["tasks"]):
        if index != 3:  # task 9's image stays missing: a 404
            task["data"]["image"] = loopback.add(f"/img{index}.png", media.png(320, 240, index))
        else:
            task["data"]["image"] = f"{loopback.base}/img{index}.png"
    body["label_config"] = CONFIG
    results = client.post("/predict", json=body).get_json()["results"]
    assert len(results) == len(body["tasks"])
    assert [("result" in item) for item in results] == [True, True, True, False, True]
    assert "HTTP 404" in results[3]["error"] and "task 9" in results[3]["error"]
    assert sum(detector.calls) == 4


@pytest.mark.parametrize(("payload", "status", "words"), [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"tasks": "x", "label_config": "<View/>"}', 400, "`tasks` must be a list"),
    (b'{"tasks": []}', 400, "label config XML) must be a string"),
    (b'{"tasks": [], "label_config": 7}', 400, "label config XML) must be a string"),
    (b"[" * 100000 + b"]" * 100000, 400, "not valid JSON"),
])
def test_malformed_predict_bodies(client: FlaskClient, payload: bytes, status: int,
                                  words: str) -> None:
    response = client.post("/predict", data=payload, content_type="application/json")
    assert response.status_code == status
    assert words in response.get_json()["error"]
    assert client.get("/health").status_code == 200


def test_webhook_acknowledges_even_without_redis(loopback: LoopbackServer) -> None:
    settings = make_settings(LABEL_STUDIO_URL=loopback.base, REDIS_URL="redis://127.0.0.1:1/0")
    client = create_app(settings, holder=holder_for(FixedDetector(BOXES))).test_client()
    body = fixture("webhook-START_TRAINING.json")["json"]
    assert client.post("/webhook", json=body).get_json() == {
        "status": "accepted", "action": "START_TRAINING", "project": 3, "queued": None,
        "note": "job queue unavailable; reconciliation will catch up"}
    assert client.post("/webhook", json={"action": "SOMETHING_NEW"}).get_json() == {
        "status": "ignored", "action": "SOMETHING_NEW"}
    response = client.post("/webhook", json={"project": {}})
    assert response.status_code == 400 and "action" in response.get_json()["error"]


def test_unknown_route_and_method_are_json(client: FlaskClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404 and "error" in response.get_json()
    response = client.get("/predict")
    assert response.status_code == 405 and "error" in response.get_json()


def test_metrics_are_prometheus_text(client: FlaskClient, loopback: LoopbackServer) -> None:
    url = loopback.add("/a.png", media.png(40, 40))
    client.post("/predict", json=predict_body([url, f"{loopback.base}/missing.png"]))
    text = client.get("/metrics").get_data(as_text=True)
    assert "mlassist_tasks_predicted_total 1.0" in text
    assert 'mlassist_task_errors_total{reason="http_404"} 1.0' in text
    assert 'mlassist_http_requests_total{method="POST",route="/predict",status="200"} 1.0' in text


def test_nan_scores_never_reach_the_json(loopback: LoopbackServer) -> None:
    nan_detector = FixedDetector([(0.1, 0.1, 0.5, 0.5, float("nan"), 1),
                                  (0.2, 0.2, 0.6, 0.6, 0.8, 2)])
    settings = make_settings(LABEL_STUDIO_URL=loopback.base,
                             ALLOWED_IMAGE_HOSTS=f"127.0.0.1:{loopback.port}")
    client = create_app(settings, holder=holder_for(nan_detector)).test_client()
    url = loopback.add("/a.png", media.png(50, 50))
    response = client.post("/predict", json=predict_body([url]))
    assert b"NaN" not in response.data
    item = response.get_json()["results"][0]
    assert [r["value"]["rectanglelabels"] for r in item["result"]] == [["vehicle"]]


def test_region_ids_are_unique_across_images_of_one_tag(client: FlaskClient,
                                                        loopback: LoopbackServer) -> None:
    config = ('<View><Image name="a" value="$left"/><Image name="b" value="$right"/>'
              '<RectangleLabels name="label" toName="a,b"><Label value="person"/>'
              '</RectangleLabels></View>')
    body = {"tasks": [{"id": 1, "data": {"left": loopback.add("/l.png", media.png(40, 40)),
                                         "right": loopback.add("/r.png", media.png(60, 30))}}],
            "label_config": config}
    item = client.post("/predict", json=body).get_json()["results"][0]
    ids = [region["id"] for region in item["result"]]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert {region["to_name"] for region in item["result"]} == {"a", "b"}
