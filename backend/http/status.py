"""What a person reads: /status (JSON) and /dashboard (HTML) for a project."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, render_template, request
from redis.exceptions import RedisError

from backend.core.errors import BadRequest
from backend.http.body import query_project
from backend.http.services import services
from backend.jobs.status import project_status
from backend.labelstudio.client import labeled_task_count
from backend.serving.champions import project_id
from backend.tools.dashboard import CACHE_S, learning_curve_svg

pages = Blueprint("status", __name__)


@pages.get("/status")
def status() -> Response:
    app = services()
    project = query_project("give the project: /status?project=ID")
    return jsonify(project_status(project, app.settings, app.labelstudio(), app.registry,
                                  app.queue()))


@pages.get("/dashboard")
def dashboard() -> str:
    app = services()
    api = app.labelstudio()
    ls_url = app.settings.label_studio_url.rstrip("/")
    raw = request.args.get("project")
    if raw is None:
        return render_template("dashboard.html", project=None, ls_url=ls_url,
                               projects=[{**p, "labeled": labeled_task_count(p)}
                                         for p in api.projects()])
    project = project_id(raw)
    if project is None:
        raise BadRequest("give the project as a number: /dashboard?project=ID")
    assignment, jobs_error = None, None
    try:
        status = project_status(project, app.settings, api, app.registry, app.queue())
        assignment = app.queue().assignment(project)
    except RedisError as exc:
        jobs_error = f"job queue unavailable ({type(exc).__name__}): jobs not shown"
        status = project_status(project, app.settings, api, app.registry, None)
    stats = app.stats_cache.get(api, project, assignment["labelers"] if assignment else None)
    versions = app.registry.versions(project)
    review = app.registry.review(project)
    return render_template("dashboard.html", project=project, ls_url=ls_url,
                           status=status, stats=stats, versions=versions, review=review,
                           assignment=assignment, jobs_error=jobs_error,
                           curve=learning_curve_svg(versions), cache_s=int(CACHE_S))
