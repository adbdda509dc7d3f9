"""A project's state in one dict: labels, models, pre-labels, the next training, the jobs."""

from __future__ import annotations

from typing import Any

from backend.core.settings import Settings
from backend.jobs.policy import next_training_at
from backend.jobs.queues import JobQueue
from backend.labelstudio.client import LabelStudioAPI, labeled_task_count
from backend.model.registry import Registry


def _brief(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    metrics = record.get("metrics") or {}
    return {"version": record["version"], "status": record.get("status"),
            "ap50": metrics.get("ap50"), "ap": metrics.get("ap"),
            "train_labels": record.get("train_labels"), "reason": record.get("reason"),
            "thresholds": record.get("thresholds"),
            "prelabels_on_validation": record.get("prelabels_on_validation")}


def project_status(project: int, settings: Settings, api: LabelStudioAPI, registry: Registry,
                   jobs: JobQueue | None) -> dict[str, Any]:
    """What `GET /status?project=ID` and `mlassist status` show (without jobs: no Redis)."""
    info = api.project(project)
    champion = registry.champion(project)
    versions = registry.versions(project)
    latest = versions[-1] if versions else None
    last_trained = jobs.last_trained(project) if jobs is not None else None
    prelabeled = None
    if champion is not None:
        prelabeled = api.count_tasks_with_prediction(project, str(champion["version"]))
    return {
        "project": project,
        "title": info.get("title"),
        "tasks": int(info.get("task_number") or 0),
        "labeled": labeled_task_count(info),
        "project_model_version": info.get("model_version") or None,
        "champion": _brief(champion),
        "latest_candidate": _brief(latest) if latest is not None and (
            champion is None or latest["version"] != champion["version"]) else None,
        "tasks_with_champion_prelabels": prelabeled,
        "pushback_done_for": jobs.pushback_done(project) if jobs is not None else None,
        "last_trained_at_labeled": last_trained,
        "next_training_at_labeled": next_training_at(
            last_trained, settings.train_min_labeled, settings.train_every,
            settings.train_growth),
        "jobs": jobs.jobs(project) if jobs is not None else
        {"queued": [], "running": [], "failed": []},
        "review": _review_brief(registry.review(project)),
    }


def _review_brief(review: dict[str, Any] | None) -> dict[str, Any] | None:
    """The last suspected-label-error review's counts (tools/review.py), without its tasks."""
    if review is None:
        return None
    return {key: review.get(key) for key in ("champion", "created_at", "labeled_tasks",
                                             "scored", "not_scored", "flagged", "min_issue",
                                             "issues_by_kind")}
