"""Label Studio's ML-backend protocol: /health, /setup, /predict, /versions.

Label Studio's read timeouts (LABEL_STUDIO_FACTS.md): /health 1 s, /setup 3 s, /predict 100 s;
the model loads in the background, so /health and /setup answer from the first second. A
/predict whose `params.context` holds a smart-tool region is interactive (serving/interactive.py).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request
from redis.exceptions import RedisError

from backend.core.errors import BadRequest, MLAssistError
from backend.http.body import json_body
from backend.http.services import services
from backend.labelstudio.label_config import coverage
from backend.serving.champions import project_id
from backend.serving.interactive import Hint, parse_hint

logger = logging.getLogger(__name__)

SETUP_MODEL_WAIT_S = 1.5  # Label Studio waits 3 s for /setup
PREDICT_MODEL_WAIT_S = 60.0

protocol = Blueprint("protocol", __name__)


@protocol.get("/health")
def health() -> Response:
    holder = services().holder
    loaded = holder.peek()
    return jsonify(status="UP", model_loaded=holder.ready, model_version=holder.version,
                   runtime=loaded.runtime if loaded else None)


@protocol.post("/setup")
def setup() -> Response:
    app = services()
    body = json_body()
    config = app.configs.config_for(body, "schema")
    project = project_id(body.get("project"))
    names = app.serving.class_names(project)
    if names is None:  # the base model is still loading: wait a little for coverage
        try:
            names = app.holder.get(timeout=SETUP_MODEL_WAIT_S).class_names
        except MLAssistError:
            names = None
    version = app.serving.version(project)
    if project is not None:
        try:  # a connected project: reconciliation looks after it from now on
            app.queue().remember_project(project)
        except RedisError as exc:
            logger.warning("project %s not remembered (Redis: %s)", project, exc)
    answer: dict[str, Any] = {"model_version": version}
    if names is not None:
        labels = coverage(names, config)
        answer["labels_covered"] = labels["covered"]
        answer["labels_uncovered"] = labels["uncovered"]
        logger.info("setup project %s: model %s covers %s; not (yet) %s",
                    project, version, labels["covered"] or "none",
                    labels["uncovered"] or "none")
    return jsonify(answer)


@protocol.post("/predict")
def predict() -> Response:
    app = services()
    body = json_body()
    tasks = body.get("tasks")
    if not isinstance(tasks, list):
        raise BadRequest("`tasks` must be a list of Label Studio tasks")
    config = app.configs.config_for(body, "label_config")
    hint = _interactive_hint(body)
    if hint is not None:  # a smart tool's click or rough box: one task, one box
        if len(tasks) != 1:
            raise BadRequest(f"a smart-tool context applies to one task; got {len(tasks)}")
        item = app.interactive.annotate(project_id(body.get("project")), tasks[0], config, hint)
        return jsonify(results=[item], model_version=item["model_version"])
    detector = app.serving.detector(project_id(body.get("project")), PREDICT_MODEL_WAIT_S)
    app.metrics.model_loaded.set(1)
    app.metrics.model_info.labels(detector.version, app.holder.spec.arch).set(1)
    results = app.predictor.predict(detector, tasks, config)
    predicted = [item for item in results if "result" in item]
    app.metrics.tasks_predicted.inc(len(predicted))
    app.metrics.boxes.inc(sum(len(item["result"]) for item in predicted))
    return jsonify(results=results, model_version=detector.version)


def _interactive_hint(body: dict[str, Any]) -> Hint | None:
    """The smart-tool hint of a /predict body (Label Studio puts it in `params.context`)."""
    params = body.get("params")
    context = params.get("context") if isinstance(params, dict) else None
    return None if context is None else parse_hint(context)


@protocol.get("/versions")
def versions() -> Response:
    # Label Studio sends no project here; `?project=ID` lists that project's versions.
    app = services()
    project = project_id(request.args.get("project", ""))
    found = [app.holder.version]
    if project is not None:
        try:
            found += [v["version"] for v in app.registry.versions(project)
                      if v.get("checkpoint")]
        except Exception as exc:  # noqa: BLE001 - the base version is still an answer
            logger.warning("registry unreadable for project %s: %s", project, exc)
    return jsonify(versions=found)
