"""Reading tasks by id from a real Label Studio: what TASKS_CREATED hands the worker is read a
page at a time over runs of nearby ids, not one request per task, and nothing of another
project, nothing missing and nothing twice comes back; and a project whose labels were
imported counts them as labeled."""

from __future__ import annotations

import pytest
from label_studio_sdk import LabelStudio

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
