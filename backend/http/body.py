"""Reading request bodies: one JSON object, within MAX_REQUEST_BYTES, or BadRequest saying why."""

from __future__ import annotations

import json
from typing import Any

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from backend.core.errors import BadRequest
from backend.serving.champions import project_id


def json_body() -> dict[str, Any]:
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


def project_key(body: dict[str, Any]) -> str | None:
    """The body's `project` as a key (Label Studio sends "<id>.<timestamp>" or an id)."""
    project = body.get("project")
    return str(project) if isinstance(project, str | int) else None


def webhook_project(body: dict[str, Any]) -> int | None:
    """The project id of a webhook body (`project` is an object there)."""
    project = body.get("project")
    if isinstance(project, dict):
        project = project.get("id")
    return project_id(project)


def query_project(message: str) -> int:
    """`?project=ID` as a number, or BadRequest with `message`."""
    project = project_id(request.args.get("project", ""))
    if project is None:
        raise BadRequest(message)
    return project
