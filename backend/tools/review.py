"""Suspected-label-error review: every labeled task scored by a model that never trained on it.

Which model scores a task (out-of-sample, for free, no extra training):
- the champion, for the tasks it did not train on: its validation split, and every task
  labeled since its round read the labels;
- otherwise the newest kept version (champion or rejected, same label set) whose round did not
  train on the task: for a task first trained on in round k, the model of round k-1.
A task every kept model trained on (the first round's training tasks, or versions recorded
before train task ids were) is counted as not scored, never guessed at.

`backend/model/label_errors.py` turns each image's predictions and labels into issues. The
worst tasks (score >= REVIEW_MIN_ISSUE, at most REVIEW_MAX_FLAGGED) get two task data fields,
`mlassist_review` (the score, a number the Data Manager sorts) and `mlassist_review_reasons`,
and the tab `mlassist: review` lists them worst first. Annotations are never touched. The full
report (every scored task) is kept in the registry as `review.json`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from backend.core.settings import Settings
from backend.labelstudio.client import LabelStudioAPI
from backend.labelstudio.label_config import parse_label_config
from backend.media.images import LoadedImage
from backend.model.dataset import (
    DatasetReport,
    ImageCache,
    Sample,
    class_names_for,
    load_samples,
    samples_from_tasks,
)
from backend.model.label_errors import KINDS, Issue, issue_score, task_issues
from backend.model.registry import Registry

logger = logging.getLogger(__name__)

FIELD = "mlassist_review"
REASONS_FIELD = "mlassist_review_reasons"
VIEW_TITLE = "mlassist: review"
NOT_SCORED = "every kept model trained on it"
UNREADABLE = "its image could not be read"
CHUNK = 32  # images loaded and predicted at once

Items = list[tuple[Sample, LoadedImage]]


def scoring_versions(versions: list[dict[str, Any]], champion: dict[str, Any],
                     task_ids: list[int]) -> dict[int, str]:
    """Task id -> the version that scores it (see the module's docstring); unscored left out."""
    usable = [champion] + sorted(
        (v for v in versions if v.get("checkpoint") and v["version"] != champion["version"]
         and v.get("class_names") == champion.get("class_names")
         and v.get("train_task_ids") is not None),
        key=lambda v: -float(v.get("created_at") or 0))
    trained = {v["version"]: set(v.get("train_task_ids") or ()) for v in usable}
    if champion.get("train_task_ids") is None:  # recorded before train ids were
        validation = set(champion.get("val_task_ids") or ())
        trained[champion["version"]] = {t for t in task_ids if t not in validation}
    chosen = {}
    for task_id in task_ids:
        for version in usable:
            if task_id not in trained[version["version"]]:
                chosen[task_id] = version["version"]
                break
    return chosen


def view_data() -> dict[str, Any]:
    """The Data Manager tab: flagged tasks, worst first."""
    return {"title": VIEW_TITLE,
            "filters": {"conjunction": "and", "items": [
                {"filter": f"filter:tasks:data.{FIELD}", "operator": "greater",
                 "type": "Number", "value": 0}]},
            "ordering": [f"-tasks:data.{FIELD}"],
            "hiddenColumns": {"explore": [], "labeling": []}}


def _predict(model: Any, items: Items, device: str) -> list[Any]:
    from backend.model.engine import evaluation_set, predict

    images, truths = evaluation_set(items)
    return list(zip(truths, predict(model, images, device), strict=True))


def score_tasks(registry: Registry, project: int, samples: list[Sample], cache: ImageCache,
                chosen: dict[int, str], settings: Settings, device: str,
                read: DatasetReport) -> dict[int, list[tuple[Issue, str]]]:
    """Issues per scored task (with the version that found them): one model at a time, the
    images loaded a chunk at a time (memory stays flat however many tasks are labeled)."""
    from backend.model.detector import load_detector_model

    by_version: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        if sample.task_id in chosen:
            by_version[chosen[sample.task_id]].append(sample)
    found: dict[int, list[tuple[Issue, str]]] = {}
    for version, group in by_version.items():
        record = registry.record(project, version)
        model, _, _ = load_detector_model(registry.checkpoint_path(project, version))
        for start in range(0, len(group), CHUNK):
            items = load_samples(group[start:start + CHUNK], cache, read)
            for (sample, _), (truth, prediction) in zip(items, _predict(model, items, device),
                                                        strict=True):
                issues = task_issues(truth, prediction, record["class_names"],
                                     record.get("thresholds") or {}, settings.review_min_score)
                found.setdefault(sample.task_id, []).extend((i, version) for i in issues)
    # a task whose image did not load is absent: not scored, not flagged
    return found


def build_report(found: dict[int, list[tuple[Issue, str]]], chosen: dict[int, str],
                 labeled: int, champion: str, settings: Settings) -> dict[str, Any]:
    """The review's numbers and its tasks, worst first."""
    tasks: list[dict[str, Any]] = []
    for task_id, pairs in found.items():
        issues = sorted(pairs, key=lambda pair: -pair[0].score)
        tasks.append({"task": task_id, "score": round(issue_score([i for i, _ in issues]), 4),
                      "scored_by": chosen[task_id], "issues": [i.to_dict() for i, _ in issues]})
    tasks.sort(key=lambda t: (-t["score"], t["task"]))
    flagged = [t for t in tasks if t["score"] >= settings.review_min_issue and t["issues"]]
    kinds = Counter(issue["kind"] for t in flagged for issue in t["issues"])
    return {"champion": champion, "created_at": time.time(), "labeled_tasks": labeled,
            "scored": len(tasks),
            "not_scored": {NOT_SCORED: labeled - len(chosen),
                           UNREADABLE: len(chosen) - len(tasks)},
            "flagged": len(flagged), "min_issue": settings.review_min_issue,
            "issues_by_kind": {kind: kinds.get(kind, 0) for kind in KINDS},
            "scored_by": dict(Counter(t["scored_by"] for t in tasks)), "tasks": tasks}


def reasons_text(task: dict[str, Any], most: int = 3) -> str:
    """What a reviewer reads in the Data Manager column: the worst issues, in words."""
    shown = [f"{issue['kind'].replace('_', ' ')}: {issue['detail']}"
             for issue in task["issues"][:most]]
    more = len(task["issues"]) - most
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def _flagged_now(api: LabelStudioAPI, project: int) -> Iterator[int]:
    after = 0
    while page := api.flagged_task_page(project, FIELD, after, 1000):
        yield from (int(task["id"]) for task in page)
        after = int(page[-1]["id"])


def mark_tasks(api: LabelStudioAPI, project: int, report: dict[str, Any],
               most: int) -> dict[str, int]:
    """Write the flagged tasks' fields, clear those no longer flagged, ensure the tab."""
    wanted = {t["task"]: t for t in report["tasks"]
              if t["score"] >= report["min_issue"] and t["issues"]}
    wanted = dict(list(wanted.items())[:most])  # report tasks are worst first
    marked = cleared = 0
    for task_id in set(_flagged_now(api, project)) - set(wanted):
        data = api.task_data(project, task_id)  # Label Studio replaces `data` whole: re-read first
        api.update_task(task_id, data={k: v for k, v in data.items()
                                       if k not in (FIELD, REASONS_FIELD)})
        cleared += 1
    for task_id, task in wanted.items():
        data = api.task_data(project, task_id)
        fields = {FIELD: task["score"], REASONS_FIELD: reasons_text(task)}
        if any(data.get(k) != v for k, v in fields.items()):
            api.update_task(task_id, data={**data, **fields})
            marked += 1
    views = {v.get("data", {}).get("title"): v for v in api.views(project)}
    found = views.get(VIEW_TITLE)
    if found is None:
        api.create_view(project, view_data())
    elif json.dumps(found.get("data", {}).get("filters"), sort_keys=True) != \
            json.dumps(view_data()["filters"], sort_keys=True):
        api.update_view(int(found["id"]), project, {**found.get("data", {}), **view_data()})
    return {"marked": marked, "cleared": cleared, "shown": len(wanted)}


def review_project(project: int, settings: Settings, api: LabelStudioAPI, cache: ImageCache,
                   registry: Registry, device: str = "cpu",
                   write_guard: Callable[[], AbstractContextManager[Any]] | None = None
                   ) -> dict[str, Any]:
    """Score every labeled task, save the report, mark the worst tasks in Label Studio."""
    champion = registry.champion(project)
    if champion is None:
        return {"status": "no champion"}
    config = parse_label_config(api.project(project)["label_config"])
    names = class_names_for(config)
    read = DatasetReport()
    samples = samples_from_tasks(api.labeled_tasks(project), config, names, 0.0, read)
    labeled = sorted({s.task_id for s in samples})
    chosen = scoring_versions(registry.versions(project), champion, labeled)
    found = score_tasks(registry, project, samples, cache, chosen, settings, device, read)
    report = build_report(found, chosen, len(labeled), str(champion["version"]), settings)
    report["dataset"] = read.to_dict()
    registry.save_review(project, report)
    with write_guard() if write_guard is not None else contextlib.nullcontext():
        report["label_studio"] = mark_tasks(api, project, report, settings.review_max_flagged)
    logger.info("project %s: review by %s: %d of %d labeled tasks scored, %d flagged (%s)",
                project, champion["version"], report["scored"], len(labeled),
                report["flagged"], report["issues_by_kind"])
    return {"status": "done", **{k: v for k, v in report.items() if k != "tasks"}}
