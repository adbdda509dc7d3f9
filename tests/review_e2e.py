"""The review end to end, inside the full loop (tests/test_e2e_loop.py), after a promotion:
the promotion queued a review on the training worker; then tasks labeled with known errors
(a box dropped, classes swapped, boxes shifted) are scored by the champion, which never
trained on them, through `mlassist review --run`; the errors are flagged with their kind, the
Data Manager tab lists them worst first, the dashboard counts them, annotations are kept."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import requests
from label_studio_sdk import LabelStudio

from backend.demo.scenes import SHAPES, make_scene
from backend.model.registry import Registry
from backend.tools.review import FIELD, NOT_SCORED, VIEW_TITLE
from tests.labels import regions_of
from tests.labelstudio import ADMIN_TOKEN

# what each corruption must be reported as
EXPECTED = {"dropped": "missing", "swapped": "wrong_class", "shifted": "loose"}


def corrupt(regions: list[dict], kind: str) -> list[dict]:
    """The scene's regions with a known error in every box (none left when `dropped`)."""
    if kind == "dropped":
        return []
    changed = []
    for region in regions:
        value = dict(region["value"])
        if kind == "swapped":
            label = value["rectanglelabels"][0]
            value["rectanglelabels"] = [SHAPES[(SHAPES.index(label) + 1) % len(SHAPES)]]
        else:  # shifted right by 40 % of the width: IoU 0.43 with the true box
            value["x"] = value["x"] + 0.4 * value["width"]
            value["width"] = min(value["width"], 100 - value["x"])
        changed.append({**region, "value": value})
    return changed


def wait_for_promotion_review(registry: Registry, project: int, version: str,
                              labeled: int) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    while (report := registry.review(project)) is None or report["champion"] != version:
        assert time.monotonic() < deadline, "the promotion queued no review"
        time.sleep(2)
    validation = registry.champion(project)["val_task_ids"]
    assert report["scored"] == len(validation), report  # out of sample: the held-out split
    assert report["not_scored"][NOT_SCORED] == labeled - len(validation)
    return report


def check_review(client: LabelStudio, base: str, project: int, version: str, registry: Registry,
                 tasks: list, seed_of_task: dict[int, int], labeled: int,
                 admin: Callable[..., str], backend_url: str, auth: tuple[str, str]) -> None:
    wait_for_promotion_review(registry, project, version, labeled)
    crowded = [t for t in tasks if len(make_scene(seed_of_task[t.id]).boxes) >= 2]
    corrupted = dict(zip((t.id for t in crowded), EXPECTED, strict=False))
    assert len(corrupted) == 3, "the scenes have too few crowded tasks"
    clean = [t.id for t in tasks if t.id not in corrupted][:3]
    for task_id in [*corrupted, *clean]:
        regions = regions_of(make_scene(seed_of_task[task_id]))
        if task_id in corrupted:
            regions = corrupt(regions, corrupted[task_id])
        client.annotations.create(id=task_id, result=regions)
    before = {t: [a["result"] for a in client.tasks.get(id=t).annotations]
              for t in [*corrupted, *clean]}

    report = json.loads(admin("review", "--project", str(project), "--run", "--json",
                              "--top", "1000"))
    scored = {t["task"]: t for t in report["tasks"]}
    print("review:", {t: (scored[t]["score"], [i["kind"] for i in scored[t]["issues"]])
                      for t in [*corrupted, *clean]})
    for task_id, kind in corrupted.items():
        found = scored[task_id]
        assert found["scored_by"] == version
        assert EXPECTED[kind] in {i["kind"] for i in found["issues"]}, (kind, found)
        assert found["score"] >= report["min_issue"], (kind, found)
    assert min(scored[t]["score"] for t in corrupted) > \
        sorted(scored[t]["score"] for t in clean)[1], "errors rank above most clean tasks"

    headers = {"Authorization": f"Token {ADMIN_TOKEN}"}
    view = next(v for v in requests.get(f"{base}/api/dm/views", params={"project": project},
                                        headers=headers, timeout=30).json()
                if v["data"]["title"] == VIEW_TITLE)
    listed = requests.get(f"{base}/api/tasks", headers=headers, timeout=30, params={
        "view": view["id"], "project": project, "page_size": 1000}).json()["tasks"]
    values = [t["data"][FIELD] for t in listed]
    assert values == sorted(values, reverse=True) and set(corrupted) <= {t["id"] for t in listed}
    assert len(listed) == report["flagged"]
    assert before == {t: [a["result"] for a in client.tasks.get(id=t).annotations]
                      for t in before}, "the review changed no annotation"

    page = requests.get(f"{backend_url}/dashboard", params={"project": project}, auth=auth,
                        timeout=60).text
    shown = re.search(r'data-stat="review-flagged">(\d+)<', page)
    assert shown is not None and int(shown.group(1)) == report["flagged"]
    assert "flagged" in admin("review", "--project", str(project))
