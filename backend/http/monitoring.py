"""/metrics for Prometheus, and the per-response counting behind it."""

from __future__ import annotations

import time

from flask import Blueprint, Response, g, request

from backend.http.services import services

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

monitoring = Blueprint("metrics", __name__)


@monitoring.after_app_request
def count(response: Response) -> Response:
    """Every response's route, method and status, and its latency."""
    metrics = services().metrics
    route = request.url_rule.rule if request.url_rule else "unmatched"
    # Any token is a method to gunicorn: one label per invented method would grow the
    # metrics without bound, unauthenticated.
    method = request.method if request.method in HTTP_METHODS else "other"
    metrics.requests.labels(route, method, str(response.status_code)).inc()
    metrics.latency.labels(route).observe(time.perf_counter() - g.get("started",
                                                                       time.perf_counter()))
    return response


@monitoring.get("/metrics")
def prometheus() -> Response:
    app = services()
    app.metrics.model_loaded.set(1 if app.holder.ready else 0)
    return Response(app.metrics.render(), mimetype="text/plain; version=0.0.4")
