"""The HTTP face Label Studio talks to: the ML-backend protocol on Flask.

Routes stay thin: parse, call a plain function, return JSON. Label Studio's read timeouts
(LABEL_STUDIO_FACTS.md): /health 1 s, /setup 3 s, /predict 100 s, /webhook 1 s for project
webhooks; the model loads in the background so /health and /setup answer from the first second.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from typing import Any

from flask import Flask, Response, g, jsonify, request
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from backend.champions import ChampionServing, project_id
from backend.connect import SECRET_HEADER
from backend.dashboard import StatsCache
from backend.errors import BadRequest, MLAssistError
from backend.images import ImageFetcher
from backend.jobs.queues import JobQueue, connect
from backend.label_config import LabelConfig, coverage, parse_label_config
from backend.labelstudio import LabelStudioAPI
from backend.metrics import Metrics
from backend.model.detector import DetectorHolder, ModelSpec
from backend.model.registry import Registry, open_registry
from backend.predictions import PredictOptions, Predictor
from backend.settings import Settings

logger = logging.getLogger(__name__)

SETUP_MODEL_WAIT_S = 1.5  # Label Studio waits 3 s for /setup
PREDICT_MODEL_WAIT_S = 60.0
PROJECT_CONFIGS_KEPT = 256
WEBHOOK_ACTIONS = frozenset({
    "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING",
    "TASKS_CREATED", "PROJECT_UPDATED",
})
UNAUTHENTICATED_ROUTES = frozenset({"/health"})
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
WEBHOOK_ROUTES = frozenset({"/webhook"})  # secret header or Basic auth
ASSIGN_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATIONS_DELETED", "TASKS_CREATED"})
TRAINING_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
                              "START_TRAINING", "PROJECT_UPDATED"})


def _json_body() -> dict[str, Any]:
    """The request body as a JSON object, or BadRequest saying why not."""
    limit = request.max_content_length
    too_large = f"request body is over MAX_REQUEST_BYTES ({limit} bytes)"
    try:
        raw = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise RequestEntityTooLarge(too_large) from None
    if limit is not None and request.content_length is None and len(raw) >= limit:
        # werkzeug ends a chunked body at the limit without a word: it is cut, not JSON.
        raise RequestEntityTooLarge(too_large)
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _project_key(body: dict[str, Any]) -> str | None:
    project = body.get("project")
    return str(project) if isinstance(project, str | int) else None


def _credentials_match(settings: Settings) -> bool:
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return False
    user_ok = hmac.compare_digest((auth.username or "").encode(),
                                  settings.basic_auth_user.encode())
    pass_ok = hmac.compare_digest((auth.password or "").encode(),
                                  settings.basic_auth_pass.encode())
    return user_ok and pass_ok


def _webhook_allowed(settings: Settings) -> bool:
    """The secret header, or Basic auth, or neither when neither is configured."""
    if settings.webhook_secret:
        given = request.headers.get(SECRET_HEADER, "")
        if hmac.compare_digest(given.encode(), settings.webhook_secret.encode()):
            return True
    if settings.auth_enabled and _credentials_match(settings):
        return True
    return not settings.webhook_secret and not settings.auth_enabled


def _unauthorized(message: str, logged: str) -> Response:
    logger.warning("%s %s -> 401: %s", request.method, request.path, logged)
    response = jsonify(error=message)
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Basic realm="MLAssist"'
    return response


def _webhook_project(body: dict[str, Any]) -> int | None:
    project = body.get("project")
    if isinstance(project, dict):
        project = project.get("id")
    return project_id(project)


def create_app(settings: Settings, *, holder: DetectorHolder | None = None,
               fetcher: ImageFetcher | None = None, registry: Registry | None = None,
               jobs: JobQueue | None = None) -> Flask:
    """Build the backend app; starts loading the base model in the background unless given
    one. Projects with a champion in the registry are served by their champion."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    metrics = Metrics()
    if holder is None:
        holder = DetectorHolder(ModelSpec.from_settings(settings), settings.device,
                                settings.effective_torch_threads(),
                                settings.inference_runtime).start()
    if fetcher is None:
        fetcher = ImageFetcher.from_settings(settings)
    if registry is None:
        registry = open_registry(settings)
    serving = ChampionServing(registry, holder, settings.device, settings.inference_runtime,
                              settings.effective_torch_threads())
    predictor = Predictor(
        fetcher,
        PredictOptions(score_threshold=settings.score_threshold,
                       max_boxes=settings.max_boxes_per_image,
                       batch_size=settings.predict_batch_size,
                       time_budget=settings.predict_time_budget,
                       show_uncalibrated=settings.prelabel_uncalibrated == "show"),
        on_task_error=lambda reason: metrics.task_errors.labels(reason).inc(),
        on_stage=lambda stage, seconds: metrics.predict_stage.labels(stage).observe(seconds))
    project_configs: dict[str, str] = {}  # project -> label config seen at /setup or /predict
    configs_lock = threading.Lock()
    app.extensions["mlassist"] = {"holder": holder, "metrics": metrics, "settings": settings}

    @app.before_request
    def authenticate() -> Response | None:
        g.started = time.perf_counter()
        if request.path in WEBHOOK_ROUTES:
            if _webhook_allowed(settings):
                return None
            return _unauthorized(
                f"webhook refused: send the {SECRET_HEADER} header (WEBHOOK_SECRET) or Basic "
                "auth", f"missing or wrong {SECRET_HEADER} / Basic auth")
        if settings.auth_enabled and request.path not in UNAUTHENTICATED_ROUTES \
                and not _credentials_match(settings):
            return _unauthorized(
                "authentication required: this backend uses HTTP Basic auth; set the ML "
                "backend's Basic auth user and password in Label Studio",
                "missing or wrong Basic auth credentials")
        return None

    @app.after_request
    def count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        # Any token is a method to gunicorn: one label per invented method would grow the
        # metrics without bound, unauthenticated.
        method = request.method if request.method in HTTP_METHODS else "other"
        metrics.requests.labels(route, method, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - g.get("started",
                                                                           time.perf_counter()))
        return response

    @app.errorhandler(MLAssistError)
    def mlassist_error(exc: MLAssistError) -> tuple[Response, int]:
        # Label Studio shows only the status and points admins at this log for the reason.
        logger.warning("%s %s -> %d: %s", request.method, request.path, exc.status, exc)
        return jsonify(error=str(exc)), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        return jsonify(error=exc.description or exc.name), exc.code or 500

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify(error="internal error; the server log has the details"), 500

    def config_for(body: dict[str, Any], key: str) -> LabelConfig:
        xml = body.get(key)
        project = _project_key(body)
        if xml is None and project is not None:
            with configs_lock:
                xml = project_configs.get(project)
        if not isinstance(xml, str):
            raise BadRequest(f"`{key}` (the project's label config XML) must be a string")
        config = parse_label_config(xml)
        if project is not None:
            with configs_lock:
                if len(project_configs) >= PROJECT_CONFIGS_KEPT \
                        and project not in project_configs:
                    project_configs.pop(next(iter(project_configs)))
                project_configs[project] = xml
        return config

    @app.get("/health")
    def health() -> Response:
        loaded = holder.peek()
        return jsonify(status="UP", model_loaded=holder.ready, model_version=holder.version,
                       runtime=loaded.runtime if loaded else None)

    @app.post("/setup")
    def setup() -> Response:
        body = _json_body()
        config = config_for(body, "schema")
        project = project_id(body.get("project"))
        names = serving.class_names(project)
        if names is None:  # the base model is still loading: wait a little for coverage
            try:
                names = holder.get(timeout=SETUP_MODEL_WAIT_S).class_names
            except MLAssistError:
                names = None
        version = serving.version(project)
        if project is not None:
            try:  # a connected project: reconciliation looks after it from now on
                queue().remember_project(project)
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

    @app.post("/predict")
    def predict() -> Response:
        body = _json_body()
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise BadRequest("`tasks` must be a list of Label Studio tasks")
        config = config_for(body, "label_config")
        detector = serving.detector(project_id(body.get("project")), PREDICT_MODEL_WAIT_S)
        metrics.model_loaded.set(1)
        metrics.model_info.labels(detector.version, holder.spec.arch).set(1)
        results = predictor.predict(detector, tasks, config)
        predicted = [item for item in results if "result" in item]
        metrics.tasks_predicted.inc(len(predicted))
        metrics.boxes.inc(sum(len(item["result"]) for item in predicted))
        return jsonify(results=results, model_version=detector.version)

    @app.get("/versions")
    def versions() -> Response:
        # Label Studio sends no project here; `?project=ID` lists that project's versions.
        project = project_id(request.args.get("project", ""))
        found = [holder.version]
        if project is not None:
            try:
                found += [v["version"] for v in registry.versions(project)
                          if v.get("checkpoint")]
            except Exception as exc:  # noqa: BLE001 - the base version is still an answer
                logger.warning("registry unreadable for project %s: %s", project, exc)
        return jsonify(versions=found)

    job_queue: list[JobQueue] = [jobs] if jobs is not None else []

    def queue() -> JobQueue:
        if not job_queue:  # connect lazily: the backend serves predictions without Redis
            job_queue.append(JobQueue(connect(settings.redis_url, fast=True)))
        return job_queue[0]

    @app.post("/webhook")
    def webhook() -> Response:
        # Label Studio gives a webhook 1 s and never retries: validate, enqueue, answer.
        body = _json_body()
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise BadRequest("webhook body needs a string `action`")
        known = action in WEBHOOK_ACTIONS
        metrics.webhooks.labels(action if known else "other").inc()
        if not known:
            return jsonify(status="ignored", action=action[:64])
        project = _webhook_project(body)
        if project is None:
            raise BadRequest("webhook body needs `project` (an object with an id)")
        tasks = body.get("tasks") or []
        if action == "TASKS_CREATED" and not isinstance(tasks, list):
            raise BadRequest("TASKS_CREATED webhook `tasks` must be a list of tasks")
        answer: dict[str, Any] = {"status": "accepted", "action": action, "project": project}
        try:
            jobs_ = queue()
            jobs_.remember_project(project)
            if action in ASSIGN_ACTIONS:
                jobs_.request_assign(project)  # only where `mlassist assign` set a split
            if action in TRAINING_ACTIONS:
                job = jobs_.request_training(project, forced=action == "START_TRAINING")
                answer["queued"] = job or "collapsed into the pending job"
            elif action == "TASKS_CREATED":
                ids = [t["id"] for t in tasks
                       if isinstance(t, dict) and isinstance(t.get("id"), int)]
                answer["queued"] = jobs_.request_new_tasks(project, ids) if ids else None
        except RedisError as exc:
            # Nothing is lost: reconciliation reads the truth from Label Studio later.
            logger.warning("webhook %s for project %s not queued (Redis: %s); "
                           "reconciliation will catch up", action, project, exc)
            answer["queued"] = None
            answer["note"] = "job queue unavailable; reconciliation will catch up"
        return jsonify(answer)

    @app.get("/status")
    def status() -> Response:
        project = project_id(request.args.get("project", ""))
        if project is None:
            raise BadRequest("give the project: /status?project=ID")
        from backend.jobs.status import project_status

        api = LabelStudioAPI(fetcher.auth)
        return jsonify(project_status(project, settings, api, registry, queue()))

    stats_cache = StatsCache()

    @app.get("/dashboard")
    def dashboard() -> str:
        from flask import render_template

        from backend.dashboard import CACHE_S, learning_curve_svg
        from backend.jobs.status import project_status

        api = LabelStudioAPI(fetcher.auth)
        ls_url = settings.label_studio_url.rstrip("/")
        raw = request.args.get("project")
        if raw is None:
            return render_template("dashboard.html", project=None, ls_url=ls_url,
                                   projects=api.projects())
        project = project_id(raw)
        if project is None:
            raise BadRequest("give the project as a number: /dashboard?project=ID")
        assignment, jobs_error = None, None
        try:
            status = project_status(project, settings, api, registry, queue())
            assignment = queue().assignment(project)
        except RedisError as exc:
            jobs_error = f"job queue unavailable ({type(exc).__name__}): jobs not shown"
            status = project_status(project, settings, api, registry, None)
        stats = stats_cache.get(api, project, assignment["labelers"] if assignment else None)
        versions = registry.versions(project)
        return render_template("dashboard.html", project=project, ls_url=ls_url,
                               status=status, stats=stats, versions=versions,
                               assignment=assignment, jobs_error=jobs_error,
                               curve=learning_curve_svg(versions), cache_s=int(CACHE_S))

    @app.get("/metrics")
    def prometheus() -> Response:
        metrics.model_loaded.set(1 if holder.ready else 0)
        return Response(metrics.render(), mimetype="text/plain; version=0.0.4")

    return app
