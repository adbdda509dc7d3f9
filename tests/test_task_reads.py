"""Reading tasks by id from a real Label Studio: what TASKS_CREATED hands the worker is read a
page at a time over runs of nearby ids, not one request per task, and nothing of another
project, nothing missing and nothing twice comes back; and a project whose labels were
imported counts them as labeled."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from label_studio_sdk import LabelStudio

from backend.core.errors import LabelStudioError
from backend.labelstudio.client import (
    LabelStudioAPI,
    LabelStudioAuth,
    id_runs,
    labeled_task_count,
)
from benchmarks.export import tasks as labeled_tasks
from tests.labels import CONFIG
from tests.labelstudio import ADMIN_TOKEN, LabelStudioServer

pytestmark = pytest.mark.e2e


def test_id_runs_join_nearby_ids_and_split_far_ones() -> None:
    assert id_runs([]) == []
    assert id_runs([5]) == [(5, 5)]
    assert id_runs([1, 2, 3, 53, 200, 201], gap=50) == [(1, 53), (200, 201)]
    assert id_runs([1, 52], gap=50) == [(1, 1), (52, 52)]


class CountingAPI(LabelStudioAPI):
    """The real client, counting its requests."""

    requests = 0

    def _call(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.requests += 1
        return super()._call(*args, **kwargs)


def test_pages_by_id_read_just_the_asked_tasks_of_the_project(
        label_studio: LabelStudioServer) -> None:
    client = LabelStudio(base_url=label_studio.url, api_key=ADMIN_TOKEN)
    project = client.projects.create(title="reads by id", label_config=CONFIG).id
    other = client.projects.create(title="reads by id, other", label_config=CONFIG).id
    data = [{"image": f"http://images.invalid/{i}.png"} for i in range(120)]
    client.projects.import_tasks(id=project, request=data[:60])
    client.projects.import_tasks(id=other, request=data[:5])
    client.projects.import_tasks(id=project, request=data[60:])
    ids = sorted(t.id for t in client.tasks.list(project=project))
    other_ids = [t.id for t in client.tasks.list(project=other)]
    api = CountingAPI(LabelStudioAuth(label_studio.url, ADMIN_TOKEN))
    api.import_predictions(project, [{"task": ids[0], "model_version": "v1", "score": 0.5,
                                      "result": []}])
    api.requests = 0

    # One import's consecutive ids: a request per page, in id order, with predictions.
    pages = list(api.task_pages_by_id(project, ids[:100], limit=40))
    assert [len(page) for page in pages] == [40, 40, 20]
    assert [t["id"] for page in pages for t in page] == ids[:100]
    assert pages[0][0]["predictions"][0]["model_version"] == "v1"
    assert pages[0][0]["data"]["image"] == "http://images.invalid/0.png"
    assert api.requests == 3

    # Ids of two imports with another project's tasks between them, ids far apart, ids that
    # are not there: only this project's asked tasks, each once.
    api.requests = 0
    asked = [ids[59], ids[60], ids[0], *other_ids, ids[119], ids[-1] + 10_000, ids[0]]
    found = [t["id"] for page in api.task_pages_by_id(project, asked) for t in page]
    assert found == sorted({ids[0], ids[59], ids[60], ids[119]})
    assert api.requests <= 4, "each run of nearby ids is one walk"


def test_imported_labels_count_as_labeled(label_studio: LabelStudioServer) -> None:
    client = LabelStudio(base_url=label_studio.url, api_key=ADMIN_TOKEN)
    project = client.projects.create(title="imported labels", label_config=CONFIG).id
    api = LabelStudioAPI(LabelStudioAuth(label_studio.url, ADMIN_TOKEN))
    api.import_tasks(project, [*labeled_tasks(6, 2, 0),
                               *({"data": {"image": f"http://images.invalid/{i}.png"}}
                                 for i in range(4))])
    unlabeled = sorted(t.id for t in client.tasks.list(project=project)
                       if not t.total_annotations)
    for task_id in unlabeled[:2]:
        client.annotations.create(id=task_id, result=[])
    record = api.project(project)
    # Label Studio marks the imported annotations as ground truth and leaves them out of
    # num_tasks_with_annotations: a project whose labels were imported would never train.
    assert record["ground_truth_number"] == 6 and record["num_tasks_with_annotations"] == 2
    assert labeled_task_count(record) == 8
    listed = next(p for p in api.projects() if p["id"] == project)
    assert labeled_task_count(listed) == 8  # the dashboard's project list


def test_tasks_lacking_a_version_leave_out_exactly_those_that_hold_it(
        label_studio: LabelStudioServer) -> None:
    """The push-back's listing: unlabeled tasks without the champion's version, Label
    Studio's default fields. A task holding another version, or none, is listed; one holding
    a version that contains the asked one as a substring is not (Label Studio's matching)."""
    client = LabelStudio(base_url=label_studio.url, api_key=ADMIN_TOKEN)
    project = client.projects.create(title="lacking a version", label_config=CONFIG).id
    api = LabelStudioAPI(LabelStudioAuth(label_studio.url, ADMIN_TOKEN))
    ids = api.import_tasks(project, [{"data": {"image": f"http://images.invalid/{i}.png"}}
                                     for i in range(6)])
    assert ids is not None and len(ids) == 6
    held = {ids[0]: ["m-v2"], ids[1]: ["m-v1"], ids[2]: ["m-v1", "m-v2"], ids[4]: ["m-v20"]}
    api.import_predictions(project, [
        {"task": task, "result": [], "score": 0.5, "model_version": version}
        for task, versions in held.items() for version in versions])
    client.annotations.create(id=ids[5], result=[])  # labeled: never listed
    listed = api.tasks_after(project, 0, 100, lacking="m-v2")
    assert [t["id"] for t in listed] == [ids[1], ids[3]]
    assert all("predictions" not in t and t["data"]["image"].startswith("http://images.invalid")
               for t in listed)
    assert [t["id"] for t in api.tasks_after(project, ids[1], 100, lacking="m-v2")] == [ids[3]]
    everything = api.tasks_after(project, 0, 100)
    assert [t["id"] for t in everything] == ids[:5]
    assert [p["model_version"] for p in everything[2]["predictions"]] == ["m-v1", "m-v2"]


class _PredictCounter(BaseHTTPRequestHandler):
    """A stand-in ML backend that counts Label Studio's /predict calls."""

    predicts = 0

    def _answer(self, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:  # /health
        self._answer({"status": "UP", "model_class": "counter"})

    def do_POST(self) -> None:  # /setup, /predict
        length = int(self.headers.get("Content-Length") or 0)
        tasks = json.loads(self.rfile.read(length) or b"{}").get("tasks") or []
        if self.path.rstrip("/").endswith("predict"):
            type(self).predicts += 1
        self._answer({"model_version": "counter", "results": [
            {"result": [], "score": 0.5, "model_version": "counter"} for _ in tasks]})

    def log_message(self, *args: object) -> None:
        pass


def test_reading_a_tasks_data_does_not_make_label_studio_predict_it(
        label_studio: LabelStudioServer) -> None:
    """Label Studio's `GET /api/tasks/<id>` asks the connected ML backend for a prediction of
    a task without one, labeled or not, and stores it: the label-error review once gave a
    labeled task a champion prediction that way. `task_data` reads through the task list."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PredictCounter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = LabelStudio(base_url=label_studio.url, api_key=ADMIN_TOKEN)
        project = client.projects.create(title="data reads", label_config=CONFIG).id
        api = LabelStudioAPI(LabelStudioAuth(label_studio.url, ADMIN_TOKEN))
        ids = api.import_tasks(project, [{"data": {"image": f"http://images.invalid/{i}.png",
                                                   "n": i}} for i in range(3)])
        assert ids is not None
        client.annotations.create(id=ids[0], result=[])
        api.create_ml_backend(project=project, title="counter",
                              url=f"http://127.0.0.1:{server.server_port}")
        _PredictCounter.predicts = 0

        assert api.task_data(project, ids[0]) == {"image": "http://images.invalid/0.png",
                                                  "n": 0}
        assert api.task_data(project, ids[1])["n"] == 1
        with pytest.raises(LabelStudioError, match="no task"):
            api.task_data(project, ids[-1] + 1000)
        assert _PredictCounter.predicts == 0
        assert not list(client.predictions.list(project=project))

        # What the task's own endpoint does (why it is not used): the backend is asked.
        requests.get(f"{label_studio.url}/api/tasks/{ids[2]}", timeout=60,
                     headers={"Authorization": f"Token {ADMIN_TOKEN}"}).raise_for_status()
        assert _PredictCounter.predicts == 1
    finally:
        server.shutdown()
