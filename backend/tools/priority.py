"""The detection order where Label Studio sorts: `data.mlassist_priority` and its tab.

The prediction `score` already carries the order (1 - usefulness; sort ascending). The task
data field is the optional second place (ORDER_PRIORITY_FIELD=true): the Data Manager sorts
data fields, and the tab `mlassist: next` shows unlabeled tasks most useful first. Label Studio
replaces `data` whole, so each write re-reads the task's data first (as assign.py does): one
GET and one PATCH per task.
"""

from __future__ import annotations

from typing import Any

from backend.labelstudio.client import LabelStudioAPI

FIELD = "mlassist_priority"
VIEW_TITLE = "mlassist: next"


def split_priorities(predictions: list[dict]) -> tuple[list[dict], dict[int, float]]:
    """Predictions without their `priority` key (Label Studio's import does not take it), and
    the priorities by task id."""
    found = {int(p["task"]): float(p["priority"]) for p in predictions if "priority" in p}
    return [{k: v for k, v in p.items() if k != "priority"} for p in predictions], found


def next_view() -> dict[str, Any]:
    """The Data Manager tab: unlabeled tasks, the highest priority first, sorted as numbers."""
    column = f"tasks:data.{FIELD}"
    return {"title": VIEW_TITLE, "ordering": [f"-{column}"],
            "columnsDisplayType": {column: "Number"},
            "filters": {"conjunction": "and", "items": [
                {"filter": "filter:tasks:total_annotations", "operator": "equal",
                 "type": "Number", "value": 0}]}}


def write_priorities(api: LabelStudioAPI, project: int, priorities: dict[int, float]) -> int:
    """Write each task's priority into its data and make sure the tab exists; tasks written."""
    for task_id, value in priorities.items():
        api.update_task(task_id, data={**api.task_data(project, task_id), FIELD: round(value, 4)})
    if priorities and not any(v.get("data", {}).get("title") == VIEW_TITLE
                              for v in api.views(project)):
        api.create_view(project, next_view())
    return len(priorities)


def import_predictions(api: LabelStudioAPI, project: int, predictions: list[dict],
                       write_field: bool) -> None:
    """Bulk-import predictions; with `write_field`, their priorities into the tasks' data."""
    clean, found = split_priorities(predictions)
    api.import_predictions(project, clean)
    if write_field:
        write_priorities(api, project, found)
