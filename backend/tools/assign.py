"""Workload split: each labeler gets a batch of unlabeled tasks as a Data Manager view.

Label Studio's open-source edition has no task assignment, so MLAssist keeps it in the task:
`data.mlassist_assignees` holds the labelers' emails as `,a@x,b@y,`. Each labeler has a view
(a Data Manager tab named `mlassist: <email>`) that shows the tasks assigned to them which they
have not annotated and which still need a label. Topping up (after `mlassist assign`, and on
every annotation or new task, by a worker) assigns more tasks, in id order, to whoever has fewer
than `batch` open ones: a task goes to one labeler, or to `overlap` labelers when asked. A
labeler dropped from the list gives back the open tasks they held.

`plan` is a pure function of the tasks' state, tested without Label Studio. A top-up reads only
what the plan can change (a project may hold 118,000 tasks): the assigned tasks that still need
a label (about labelers x batch), then unassigned ones in id order, a page at a time, until
every labeler is full; it writes each labeler's new tasks in one bulk request.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from backend.core.errors import LabelStudioError, MLAssistError
from backend.labelstudio.client import LabelStudioAPI

logger = logging.getLogger(__name__)

FIELD = "mlassist_assignees"
VIEW_PREFIX = "mlassist: "
PAGE = 1000  # tasks per read of the assigned tasks, and the most per read of unassigned ones
MIN_FRESH_PAGE = 100  # the fewest unassigned tasks read at once (a refill of one task)
WRITE_CHUNK = 1000  # task ids per bulk write


class AssignError(MLAssistError):
    """An assignment that cannot be made; the message says why."""


@dataclass(frozen=True)
class TaskState:
    id: int
    assignees: frozenset[str]
    annotators: frozenset[int]  # user ids who annotated (or skipped) it
    annotations: int


@dataclass
class Plan:
    changes: dict[int, frozenset[str]] = field(default_factory=dict)
    open_tasks: dict[str, int] = field(default_factory=dict)  # after the plan


def encode(assignees: Iterable[str]) -> str:
    names = sorted(set(assignees))
    return f",{','.join(names)}," if names else ""


def decode(value: object) -> frozenset[str]:
    return frozenset(n for n in value.split(",") if n) if isinstance(value, str) else frozenset()


def plan(tasks: list[TaskState], labelers: dict[str, int], batch: int, overlap: int = 1) -> Plan:
    """Which tasks get which labelers, so each holds `batch` open tasks where there are enough.

    A task is open for a labeler when it is assigned to them, they have not annotated it, and it
    has fewer than `overlap` annotations. Tasks are handed out in id order, each to the labeler
    holding the fewest open tasks (ties: the order given), never twice to the same labeler.
    """
    result = Plan()
    state = {t.id: set(t.assignees) for t in tasks}

    def still_needed(task: TaskState) -> bool:
        return task.annotations < overlap

    for task in tasks:  # release what labelers no longer on the list held open
        gone = {name for name in task.assignees if name not in labelers}
        if gone and still_needed(task):
            state[task.id] -= gone
    open_count = {name: 0 for name in labelers}
    for task in tasks:
        if still_needed(task):
            for name in state[task.id]:
                if name in labelers and labelers[name] not in task.annotators:
                    open_count[name] += 1
    order = list(labelers)
    for task in sorted(tasks, key=lambda t: t.id):
        if not still_needed(task):
            continue
        while len(state[task.id]) < overlap:
            wanting = [name for name in order if open_count[name] < batch
                       and name not in state[task.id]
                       and labelers[name] not in task.annotators]
            if not wanting:
                break
            chosen = min(wanting, key=lambda name: open_count[name])
            state[task.id].add(chosen)
            open_count[chosen] += 1
        if all(count >= batch for count in open_count.values()):
            break
    for task in tasks:
        if frozenset(state[task.id]) != task.assignees:
            result.changes[task.id] = frozenset(state[task.id])
    result.open_tasks = open_count
    return result


def task_state(task: dict) -> TaskState:
    """A Label Studio task (as `task_page` lists it) as the plan sees it."""
    return TaskState(int(task["id"]), decode((task.get("data") or {}).get(FIELD)),
                     frozenset(int(a) for a in task.get("annotators") or [] if isinstance(a, int)),
                     int(task.get("total_annotations") or 0)
                     + int(task.get("cancelled_annotations") or 0))


ASSIGNED = {"filter": f"filter:tasks:data.{FIELD}", "operator": "contains", "type": "String",
            "value": ","}
# Unassigned tasks, as two walks: Label Studio's `not_contains` leaves out tasks without the
# field (SQL NULL), and its `empty` counts "" as empty only when the project's first task holds
# a string there, so "no field" and "emptied by a release" are asked for separately.
UNASSIGNED = ({"filter": f"filter:tasks:data.{FIELD}", "operator": "empty", "type": "String",
               "value": True},
              {"filter": f"filter:tasks:data.{FIELD}", "operator": "equal", "type": "String",
               "value": ""})


def _still_needed(overlap: int) -> list[dict[str, Any]]:
    """Filter items that keep every task `plan` may change: it touches only tasks with fewer
    than `overlap` annotations and skips together, so each count alone is below `overlap`."""
    return [{"filter": f"filter:tasks:{count}", "operator": "less", "type": "Number",
             "value": overlap} for count in ("total_annotations", "cancelled_annotations")]


def _assigned_tasks(api: LabelStudioAPI, project: int, overlap: int) -> dict[int, TaskState]:
    """Every task someone holds that still needs a label: the open batches, plus what dropped
    labelers hold (to give back). Fully labeled tasks are left out: `plan` never changes them."""
    found: dict[int, TaskState] = {}
    after = 0
    while True:
        # Every field: who annotated or skipped a task (`annotators`) is only listed then.
        page = api.task_page(project, after, PAGE,
                             where=[ASSIGNED, *_still_needed(overlap)], full=True)
        found.update((state.id, state) for state in map(task_state, page))
        if len(page) < PAGE:
            return found
        after = int(page[-1]["id"])


def _settled(result: Plan, tasks: dict[int, TaskState], batch: int, read_to: float) -> bool:
    """Whether a plan over the assigned tasks and the unassigned ones up to id `read_to` is the
    plan over all tasks: every labeler is full, and no task past `read_to` got a labeler (an
    unassigned task not read yet, with a lower id, would have had it first)."""
    if read_to == math.inf:
        return True
    if any(count < batch for count in result.open_tasks.values()):
        return False
    return all(task_id <= read_to for task_id, now in result.changes.items()
               if now - tasks[task_id].assignees)


def plan_top_up(api: LabelStudioAPI, project: int, labelers: dict[str, int], batch: int,
                overlap: int) -> Plan:
    """`plan` over only the tasks it needs: the assigned ones still needed, then unassigned
    ones that still need a label, in id order, a page at a time until every labeler is full."""
    tasks = _assigned_tasks(api, project, overlap)
    walked: list[float] = [0] * len(UNASSIGNED)  # each walk's last id read; inf once done
    while True:
        read_to = min(walked)  # every unassigned task up to here has been read
        result = plan(sorted(tasks.values(), key=lambda t: t.id), labelers, batch, overlap)
        if _settled(result, tasks, batch, read_to):
            return result
        short = sum(max(0, batch - count) for count in result.open_tasks.values())
        limit = min(PAGE, max(MIN_FRESH_PAGE, short))
        lagging = walked.index(read_to)
        # With overlap, a task still needed may hold a label already: its annotator must be
        # known (every field); with none, a still-needed task has no annotator.
        page = api.task_page(project, int(read_to), limit,
                             where=[UNASSIGNED[lagging], *_still_needed(overlap)],
                             full=overlap > 1)
        for state in map(task_state, page):
            tasks.setdefault(state.id, state)
        walked[lagging] = math.inf if len(page) < limit else int(page[-1]["id"])


def _write(api: LabelStudioAPI, project: int, changes: dict[int, frozenset[str]]) -> None:
    """One bulk write per distinct assignee list (a labeler's new batch is one request)."""
    groups: dict[str, list[int]] = {}
    for task_id, assignees in sorted(changes.items()):
        groups.setdefault(encode(assignees), []).append(task_id)
    for value, ids in groups.items():
        for start in range(0, len(ids), WRITE_CHUNK):
            chunk = ids[start:start + WRITE_CHUNK]
            try:
                api.set_data_field(project, chunk, FIELD, value)
            except LabelStudioError as exc:  # a Label Studio without the action
                logger.warning("bulk data update refused (%s); writing task by task", exc)
                for task_id in chunk:
                    # Re-read right before writing: Label Studio replaces `data` whole, and
                    # the sync may have re-signed the task's URL since the walk.
                    api.update_task(task_id, data={**api.task_data(project, task_id), FIELD: value})


def view_filters(email: str, user_id: int, overlap: int) -> dict[str, Any]:
    """The Data Manager filter of a labeler's view: theirs, not annotated by them, still open."""
    return {"conjunction": "and", "items": [
        {"filter": f"filter:tasks:data.{FIELD}", "operator": "contains", "type": "String",
         "value": f",{email},"},
        {"filter": "filter:tasks:annotators", "operator": "not_contains", "type": "List",
         "value": user_id},
        {"filter": "filter:tasks:total_annotations", "operator": "less", "type": "Number",
         "value": overlap}]}


def top_up(api: LabelStudioAPI, project: int, emails: list[str], batch: int,
           overlap: int = 1) -> dict[str, Any]:
    """Apply the plan to Label Studio and make sure every labeler has their view."""
    if batch < 1 or overlap < 1:
        raise AssignError("--batch and --overlap must be at least 1")
    if overlap > len(emails):
        raise AssignError(f"overlap {overlap} needs at least {overlap} labelers")
    users = {str(u.get("email", "")).lower(): (str(u.get("email")), int(u["id"]))
             for u in api.users() if isinstance(u.get("id"), int)}
    missing = [e for e in emails if e.lower() not in users]
    if missing:
        raise AssignError(f"no Label Studio user for {missing}; invite them first "
                          "(Organization > Add people), then assign")
    labelers = dict(users[e.lower()] for e in emails)  # emails as Label Studio spells them
    result = plan_top_up(api, project, labelers, batch, overlap)
    _write(api, project, result.changes)
    views = {v.get("data", {}).get("title"): v for v in api.views(project)}
    for email, user_id in labelers.items():
        title = f"{VIEW_PREFIX}{email}"
        wanted = {"title": title, "filters": view_filters(email, user_id, overlap),
                  "ordering": ["tasks:id"]}
        found = views.get(title)
        if found is None:
            api.create_view(project, wanted)
        elif json.dumps(found.get("data", {}).get("filters"), sort_keys=True) != \
                json.dumps(wanted["filters"], sort_keys=True):
            api.update_view(int(found["id"]), project, {**found.get("data", {}), **wanted})
    logger.info("project %s: assignments changed on %d tasks; open per labeler %s", project,
                len(result.changes), result.open_tasks)
    return {"labelers": list(labelers), "changed_tasks": len(result.changes),
            "open": result.open_tasks,
            "batch": batch, "overlap": overlap}
