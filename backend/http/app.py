"""The app factory: one Flask app wired from its blueprints (protocol, webhook, status pages,
metrics), the auth check and the JSON error handlers. Routes stay thin: parse, call a plain
function, return JSON; long work never runs inside a request."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from backend.core.errors import MLAssistError
from backend.core.settings import Settings
from backend.http.auth import authenticate
from backend.http.monitoring import monitoring
from backend.http.protocol import protocol
from backend.http.services import EXTENSION, build_services
from backend.http.status import pages
from backend.http.webhook import webhooks
from backend.jobs.queues import JobQueue
from backend.media.images import ImageFetcher
from backend.model.detector import DetectorHolder
from backend.model.registry import Registry

logger = logging.getLogger(__name__)


def create_app(settings: Settings, *, holder: DetectorHolder | None = None,
               fetcher: ImageFetcher | None = None, registry: Registry | None = None,
               jobs: JobQueue | None = None) -> Flask:
    """Build the backend app; starts loading the base model in the background unless given
    one. Projects with a champion in the registry are served by their champion."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions[EXTENSION] = build_services(settings, holder, fetcher, registry, jobs)
    app.before_request(lambda: authenticate(settings))
    for blueprint in (protocol, webhooks, pages, monitoring):
        app.register_blueprint(blueprint)
    app.register_error_handler(MLAssistError, _mlassist_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    return app


def _mlassist_error(exc: MLAssistError) -> tuple[Response, int]:
    # Label Studio shows only the status and points admins at this log for the reason.
    logger.warning("%s %s -> %d: %s", request.method, request.path, exc.status, exc)
    return jsonify(error=str(exc)), exc.status


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    return jsonify(error=exc.description or exc.name), exc.code or 500


def _unexpected(exc: Exception) -> tuple[Response, int]:
    logger.exception("unhandled error on %s %s", request.method, request.path)
    return jsonify(error="internal error; the server log has the details"), 500
