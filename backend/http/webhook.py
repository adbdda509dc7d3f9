"""/webhook: Label Studio's events become queued jobs. Label Studio gives a webhook 1 s and
never retries, so this validates, enqueues and answers; the training runs on a worker."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify
from redis.exceptions import RedisError

from backend.core.errors import BadRequest
from backend.http.body import json_body, webhook_project
from backend.http.services import services
from backend.jobs.queues import JobQueue

logger = logging.getLogger(__name__)

WEBHOOK_ACTIONS = frozenset({
    "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING",
    "TASKS_CREATED", "PROJECT_UPDATED",
})
ASSIGN_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATIONS_DELETED", "TASKS_CREATED"})
TRAINING_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
                              "START_TRAINING", "PROJECT_UPDATED"})

webhooks = Blueprint("webhook", __name__)


def _enqueue(jobs: JobQueue, action: str, project: int, tasks: list) -> str | None:
    """Queue what the event calls for; what goes in `queued` of the answer."""
    jobs.remember_project(project)
    if action in ASSIGN_ACTIONS:
        jobs.request_assign(project)  # only where `mlassist assign` set a split
    if action in TRAINING_ACTIONS:
        job = jobs.request_training(project, forced=action == "START_TRAINING")
        return job or "collapsed into the pending job"
    if action == "TASKS_CREATED":
        ids = [t["id"] for t in tasks if isinstance(t, dict) and isinstance(t.get("id"), int)]
        return jobs.request_new_tasks(project, ids) if ids else None
    return None


@webhooks.post("/webhook")
def webhook() -> Response:
    app = services()
    body = json_body()
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise BadRequest("webhook body needs a string `action`")
    known = action in WEBHOOK_ACTIONS
    app.metrics.webhooks.labels(action if known else "other").inc()
    if not known:
        return jsonify(status="ignored", action=action[:64])
    project = webhook_project(body)
    if project is None:
        raise BadRequest("webhook body needs `project` (an object with an id)")
    tasks = body.get("tasks") or []
    if action == "TASKS_CREATED" and not isinstance(tasks, list):
        raise BadRequest("TASKS_CREATED webhook `tasks` must be a list of tasks")
    answer: dict[str, Any] = {"status": "accepted", "action": action, "project": project}
    try:
        answer["queued"] = _enqueue(app.queue(), action, project, tasks)
    except RedisError as exc:
        # Nothing is lost: reconciliation reads the truth from Label Studio later.
        logger.warning("webhook %s for project %s not queued (Redis: %s); "
                       "reconciliation will catch up", action, project, exc)
        answer["queued"] = None
        answer["note"] = "job queue unavailable; reconciliation will catch up"
    return jsonify(answer)
