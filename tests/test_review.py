"""The review's choice of out-of-sample models, its report, and its marks in a real Label
Studio: the `mlassist: review` tab lists flagged tasks worst first, a task no longer flagged
leaves it, other data and the annotations stay as they were."""

from __future__ import annotations

import requests
from label_studio_sdk import LabelStudio

from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth
from backend.model.label_errors import Issue
from backend.tools.review import (
    FIELD,
    NOT_SCORED,
    REASONS_FIELD,
    UNREADABLE,
    VIEW_TITLE,
    build_report,
    mark_tasks,
    reasons_text,
    scoring_versions,
)
from tests.conftest import make_settings
from tests.labels import CONFIG
from tests.labelstudio import ADMIN_TOKEN, LabelStudioServer

NAMES = ["__background__", "square"]


def version(name: str, created: float, train: list[int] | None, val: list[int] = (),
            names: list[str] = NAMES, checkpoint: str | None = "x.pt") -> dict:
    return {"version": name, "created_at": created, "train_task_ids": train,
            "val_task_ids": list(val), "class_names": names, "checkpoint": checkpoint}


def test_each_task_is_scored_by_the_newest_model_that_did_not_train_on_it() -> None:
    v1 = version("v1", 1, train=[1, 2, 3], val=[4])
    v2 = version("v2", 2, train=[1, 2, 3, 5, 6], val=[4, 7])
    v3 = version("v3", 3, train=[1, 2, 3, 5, 6, 8], val=[4, 7])  # rejected, newer
    chosen = scoring_versions([v1, v2, v3], v2, [1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert chosen == {4: "v2", 7: "v2", 8: "v2", 9: "v2",  # the champion never saw them
                      5: "v1", 6: "v1"}  # first trained on in v2: v3 trained on them too
    assert 1 not in chosen, "every kept model trained on the first round's tasks"


def test_pruned_relabelled_and_unrecorded_versions_never_score() -> None:
    champion = version("v3", 3, train=[1, 2, 5])
    others = [version("v1", 1, train=[1], checkpoint=None),  # pruned
              version("v2", 2, train=[1], names=["__background__", "circle"]),
              version("v0", 0, train=None)]  # recorded before train task ids were
    assert scoring_versions([*others, champion], champion, [1, 2, 5, 6]) == {6: "v3"}
    old = version("v9", 9, train=None, val=[2])
    assert scoring_versions([old], old, [1, 2, 3]) == {2: "v9"}, "only its validation split"


def issue(kind: str, score: float) -> Issue:
    return Issue(kind, "square", (1.0, 2.0, 3.0, 4.0), score, f"{kind} at {score}")


def test_the_report_ranks_tasks_and_counts_what_was_not_scored() -> None:
    found = {10: [(issue("loose", 0.2), "v2")],
             11: [(issue("missing", 0.9), "v2"), (issue("wrong_class", 0.4), "v2")],
             12: []}
    chosen = {10: "v2", 11: "v2", 12: "v1", 13: "v1"}  # 13: its image did not load
    report = build_report(found, chosen, labeled=6, champion="v2",
                          settings=make_settings(REVIEW_MIN_ISSUE="0.3"))
    assert [t["task"] for t in report["tasks"]] == [11, 10, 12]
    assert report["tasks"][0]["score"] == 0.9 and report["flagged"] == 1
    assert report["issues_by_kind"] == {"missing": 1, "wrong_class": 1, "loose": 0}
    assert report["not_scored"] == {NOT_SCORED: 2, UNREADABLE: 1}
    assert report["scored"] == 3 and report["scored_by"] == {"v2": 2, "v1": 1}
    text = reasons_text(report["tasks"][0], most=1)
    assert text == "missing: missing at 0.9; and 1 more"


def _report(scores: dict[int, float]) -> dict:
    tasks = [{"task": t, "score": s, "issues": [issue("missing", s).to_dict()]}
             for t, s in sorted(scores.items(), key=lambda item: -item[1])]
    return {"tasks": tasks, "min_issue": 0.3}


def test_marks_in_label_studio_sort_worst_first_and_clear_when_fixed(
        label_studio: LabelStudioServer, client: LabelStudio) -> None:
    project = client.projects.create(title="review marks", label_config=CONFIG).id
    client.projects.import_tasks(id=project, request=[
        {"image": f"/data/upload/{i}.png", "note": f"keep me {i}"} for i in range(6)])
    ids = sorted(t.id for t in client.tasks.list(project=project))
    region = {"from_name": "label", "to_name": "image", "type": "rectanglelabels",
              "value": {"x": 1, "y": 2, "width": 30, "height": 40,
                        "rectanglelabels": ["square"]}}
    for task_id in ids:
        client.annotations.create(id=task_id, result=[region])
    api = LabelStudioAPI(LabelStudioAuth(label_studio.url, ADMIN_TOKEN))

    def annotations(task_id: int) -> list:
        return [(a["id"], a["result"], a["updated_at"])
                for a in client.tasks.get(id=task_id).annotations]

    before = {task_id: annotations(task_id) for task_id in ids}

    scores = {ids[0]: 0.35, ids[1]: 0.95, ids[2]: 0.1, ids[3]: 0.6, ids[4]: 0.8}
    assert mark_tasks(api, project, _report(scores), most=3) == {
        "marked": 3, "cleared": 0, "shown": 3}  # the worst three; 0.1 is under min_issue
    view = next(v for v in api.views(project) if v["data"]["title"] == VIEW_TITLE)
    listed = requests.get(f"{label_studio.url}/api/tasks", timeout=30,
                          headers={"Authorization": f"Token {ADMIN_TOKEN}"},
                          params={"view": view["id"], "project": project}).json()["tasks"]
    assert [t["id"] for t in listed] == [ids[1], ids[4], ids[3]]
    assert [t["data"][FIELD] for t in listed] == [0.95, 0.8, 0.6]
    assert listed[0]["data"][REASONS_FIELD] == "missing: missing at 0.95"

    fixed = {ids[1]: 0.0, ids[4]: 0.8, ids[3]: 0.6, ids[0]: 0.5}  # someone fixed ids[1]
    assert mark_tasks(api, project, _report(fixed), most=3) == {
        "marked": 1, "cleared": 1, "shown": 3}
    assert mark_tasks(api, project, _report(fixed), most=3)["marked"] == 0, "idempotent"
    assert len([v for v in api.views(project) if v["data"]["title"] == VIEW_TITLE]) == 1
    for task_id in ids:
        task = client.tasks.get(id=task_id)
        assert task.data["note"].startswith("keep me"), "other data kept"
        assert (FIELD in task.data) == (task_id in (ids[4], ids[3], ids[0]))
        assert annotations(task_id) == before[task_id], "annotations untouched"
