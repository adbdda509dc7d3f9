"""A fuzz run of the HTTP endpoints: schemathesis generates requests from backend/http/openapi.yaml,
valid and invalid ones, and sends them to the real Flask app (a fixed detector, a real Redis,
Label Studio unreachable). No request may get a 5xx but the documented 502 of the routes that
need Label Studio, every error is JSON with an `error`, and every answer matches the spec."""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from backend.http.app import create_app
from tests.conftest import make_settings
from tests.fakes import FixedDetector, holder_for

OPENAPI = Path(__file__).resolve().parents[1] / "backend" / "http" / "openapi.yaml"
AUTH = {"Authorization": "Basic " + base64.b64encode(b"fuzz:fuzz-pass").decode()}
NEEDS_LABEL_STUDIO = {"/status", "/dashboard"}  # 502 when Label Studio cannot be reached
EXAMPLES_PER_OPERATION = 150

schema = schemathesis.openapi.from_path(OPENAPI)
schema.config.generation.update(max_examples=EXAMPLES_PER_OPERATION, deterministic=True,
                                database="none")
sent: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report_count(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    spec = sum(n for op, n in sent.items() if not op.endswith("(any JSON)"))
    line = (f"fuzz: {sum(sent.values())} generated requests: {spec} from the OpenAPI spec "
            f"over {sum(1 for op in sent if not op.endswith('(any JSON)'))} method/route pairs, "
            + ", ".join(f"{n} {op}" for op, n in sorted(sent.items()) if op.endswith("(any JSON)")))
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(line)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, redis_server) -> Flask:
    settings_ = make_settings(
        BASIC_AUTH_USER="fuzz", BASIC_AUTH_PASS="fuzz-pass", WEBHOOK_SECRET="fuzz-secret",
        REDIS_URL=redis_server.url.rsplit("/", 1)[0] + "/7",
        MODEL_DIR=str(tmp_path_factory.mktemp("models")), MAX_REQUEST_BYTES=str(2 ** 20),
        PREDICT_TIME_BUDGET="10", IMAGE_FETCH_TIMEOUT="2")
    detector = FixedDetector([(0.1, 0.2, 0.5, 0.6, 0.9, 1), (0.5, 0.5, 1.2, 1.1, 0.7, 2)])
    return create_app(settings_, holder=holder_for(detector))


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_endpoints_never_fail_on_generated_requests(case: schemathesis.Case, app: Flask) -> None:
    path = case.operation.path
    response = case.call(app=app, headers=AUTH)
    sent[f"{case.method} {path}"] += 1
    status = response.status_code
    assert status < 500 or (status == 502 and path in NEEDS_LABEL_STUDIO), \
        (status, response.content[:300])
    body = response.content
    assert b"Traceback" not in body
    if status >= 400:
        assert response.headers.get("content-type", [""])[0].startswith("application/json")
        error = json.loads(body, parse_constant=_refuse)
        assert isinstance(error, dict) and isinstance(error.get("error"), str) and error["error"]
    elif response.headers.get("content-type", [""])[0].startswith("application/json"):
        _check_items(json.loads(body, parse_constant=_refuse))
    case.validate_response(response, checks=[status_code_conformance, content_type_conformance,
                                             response_schema_conformance])


def _refuse(token: str) -> None:
    raise AssertionError(f"non-standard JSON constant {token} in a response")


def _check_items(answer: object) -> None:
    """A /predict item without `result` must name its problem, not hide it."""
    if isinstance(answer, dict) and isinstance(answer.get("results"), list):
        for item in answer["results"]:
            if "result" not in item:
                assert item["error"] and "internal error" not in item["error"], item


# -- wrong types everywhere -------------------------------------------------------------------
# The spec-guided fuzz above mostly sends what the spec allows; here every field of the JSON
# routes takes any JSON value (NaN, huge integers, lone surrogates, nesting), next to hostile
# image references and label configs.

CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="label" '
          'toName="image"><Label value="person"/><Label value="car"/></RectangleLabels></View>')
REFERENCES = ["http://169.254.169.254/latest/meta-data/", "http://[::1", "http://[zz]/a.png",
              "file:///etc/passwd", "gopher://127.0.0.1:70/", "http://0.0.0.0:9090/",
              "azure-blob://[", "s3://\ud800", "/data/upload/1/a.png", "azure-blob://c/k.png",
              "http://a..example.com/x.png", "http://u:p@127.0.0.1:1/", "data:,x",
              "data:image/png;base64,!!", "data:image/png;base64,iVBORw0KGgo=", "//evil/x",
              " ", "http://127.0.0.1:1/a\r\nX-Injected: 1"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(),
                    st.text(st.characters(exclude_categories=()), max_size=12),
                    st.sampled_from(REFERENCES))
json_values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                     st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=10)


def either(valid: object) -> st.SearchStrategy[object]:
    return st.one_of(st.just(valid), json_values)


def mostly(valid: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """`valid` three times in four, any JSON value otherwise."""
    return st.integers(0, 3).flatmap(lambda pick: json_values if pick == 0 else valid)


configs = st.one_of(st.just(CONFIG), json_values, st.sampled_from([
    CONFIG.replace('"$image"', '"\ud800"'), CONFIG + "\ud800", "<View/>", "",
    CONFIG.replace('toName="image"', 'toName="image" model_score_threshold="NaN"'),
    '<!DOCTYPE v [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><View>&b;</View>']))
tasks = st.one_of(json_values, st.fixed_dictionaries(
    {"id": either(1), "data": st.one_of(json_values, st.fixed_dictionaries(
        {"image": st.one_of(st.sampled_from(REFERENCES), json_values)}))},
    optional={"annotations": json_values, "predictions": json_values}))
BODIES = {
    "/setup": st.fixed_dictionaries({"schema": configs},
                                    optional={"project": either("5.1795655254"),
                                              "hostname": json_values,
                                              "extra_params": json_values}),
    "/predict": st.fixed_dictionaries({"tasks": st.one_of(st.lists(tasks, max_size=4),
                                                          json_values),
                                       "label_config": configs},
                                      optional={"project": either("5.1795655254"),
                                                "params": json_values}),
    "/webhook": st.fixed_dictionaries(
        {"action": mostly(st.sampled_from(["START_TRAINING", "TASKS_CREATED",
                                           "ANNOTATION_CREATED", "ANNOTATIONS_DELETED",
                                           "PROJECT_UPDATED", "x" * 100])),
         "project": mostly(st.sampled_from([{"id": 3}, 3, "3.17"])),
         "tasks": st.one_of(st.lists(either({"id": 1}), max_size=3), scalars, json_values)},
        optional={"annotation": json_values, "annotations": json_values}),
}


@pytest.mark.parametrize("path", sorted(BODIES))
@settings(max_examples=250, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_json_routes_survive_wrong_types(app: Flask, path: str, data: st.DataObject) -> None:
    body = data.draw(st.one_of(BODIES[path], json_values), label="body")
    raw = json.dumps(body, allow_nan=True).encode()
    response = app.test_client().post(path, data=raw, headers=AUTH,
                                      content_type="application/json")
    sent[f"POST {path} (any JSON)"] += 1
    assert response.status_code < 500, (response.status_code, response.get_data()[:300])
    answer = json.loads(response.get_data(), parse_constant=_refuse)
    assert isinstance(answer, dict)
    if response.status_code >= 400:
        assert isinstance(answer.get("error"), str) and answer["error"]
    else:
        _check_items(answer)
