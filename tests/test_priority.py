"""The detection order where Label Studio sorts: the pure split of priorities, then a real
Label Studio 1.23.2 sorting its `mlassist: next` tab by `data.mlassist_priority`."""

from __future__ import annotations

import logging
import time

import pytest
import requests
from label_studio_sdk import LabelStudio

from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth
from backend.tools.priority import FIELD, VIEW_TITLE, import_predictions, split_priorities
from tests.labels import CONFIG
from tests.labelstudio import ADMIN_TOKEN, LabelStudioServer

logger = logging.getLogger(__name__)


def test_priorities_leave_the_import_payload() -> None:
    clean, found = split_priorities([{"task": 3, "score": 0.2, "priority": 0.8},
                                     {"task": 4, "score": 0.5}])
    assert clean == [{"task": 3, "score": 0.2}, {"task": 4, "score": 0.5}]
    assert found == {3: 0.8}


@pytest.mark.e2e
def test_next_tab_serves_the_highest_priority_first(label_studio: LabelStudioServer,
                                                    client: LabelStudio) -> None:
    project = client.projects.create(title="ordering", label_config=CONFIG).id
    ids = client.projects.import_tasks(id=project, request=[{"image": f"/x/{k}.jpg"}
                                                             for k in range(8)],
                                       return_task_ids=True).task_ids
    # Values whose text order differs from their numeric order (0.0001 < 0.05 < 0.4 < 1.0),
    # and one task labeled (the tab leaves it out).
    values = [0.4, 0.0001, 1.0, 0.05, 0.9, 0.33, 0.7, 0.123]
    predictions = [{"task": t, "result": [], "score": round(1 - v, 6), "model_version": "v1",
                    "priority": v} for t, v in zip(ids, values, strict=True)]
    api = LabelStudioAPI(LabelStudioAuth(label_studio.url, ADMIN_TOKEN))
    started = time.perf_counter()
    import_predictions(api, project, predictions, write_field=True)
    logger.info("priorities of %d tasks written in %.2f s", len(ids),
                time.perf_counter() - started)
    client.annotations.create(id=ids[2], result=[])
    assert api.task_data(project, ids[0]) == {"image": "/x/0.jpg", FIELD: 0.4}
    views = [v for v in api.views(project) if v.get("data", {}).get("title") == VIEW_TITLE]
    assert len(views) == 1
    found = requests.get(f"{label_studio.url}/api/tasks", timeout=30,
                         headers={"Authorization": f"Token {ADMIN_TOKEN}"},
                         params={"view": views[0]["id"], "project": project,
                                 "page_size": 100}).json()
    order = [t["id"] for t in found["tasks"]]
    expected = [t for t, _ in sorted(zip(ids, values, strict=True), key=lambda p: -p[1])
                if t != ids[2]]
    assert order == expected
