"""Who may call: HTTP Basic auth on every route but /health, and on /webhook the secret header
(WEBHOOK_SECRET) or Basic auth. Secrets are compared in constant time and never logged."""

from __future__ import annotations

import hmac
import logging
import time

from flask import Response, g, jsonify, request

from backend.core.settings import Settings
from backend.labelstudio.connect import SECRET_HEADER

logger = logging.getLogger(__name__)

UNAUTHENTICATED_ROUTES = frozenset({"/health"})
WEBHOOK_ROUTES = frozenset({"/webhook"})  # secret header or Basic auth


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


def authenticate(settings: Settings) -> Response | None:
    """The app's before-request check: None to go on, or the 401 to answer."""
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
