"""Who the backend is to Label Studio and how it authenticates.

Label Studio accepts two kinds of API key: a legacy token (sent as `Authorization: Token <key>`)
and a personal access token, a JWT refresh token that must be exchanged at
`/api/token/refresh/` for a short-lived access token sent as `Bearer`. `LabelStudioAuth`
hides the difference. The key is only ever sent to the Label Studio origin.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from urllib.parse import urlsplit

import requests

from backend.core.errors import LabelStudioAuthError

logger = logging.getLogger(__name__)

REFRESH_MARGIN_S = 30.0
REFRESH_TIMEOUT_S = 10.0


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, the port made explicit."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def _jwt_claims(token: str) -> dict | None:
    """The unverified payload of a JWT, or None when the token is not a JWT."""
    pieces = token.split(".")
    if len(pieces) != 3:
        return None
    try:
        padded = pieces[1] + "=" * (-len(pieces[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


class LabelStudioAuth:
    """Builds the Authorization header for Label Studio, refreshing PAT access tokens."""

    def __init__(self, base_url: str, api_key: str,
                 session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._session = session or requests.Session()
        self._lock = threading.Lock()
        self._access: str | None = None
        self._access_expires = 0.0
        self.is_personal_access_token = _jwt_claims(api_key) is not None

    def __repr__(self) -> str:
        kind = "personal access token" if self.is_personal_access_token else "legacy token"
        return f"LabelStudioAuth({self.base_url!r}, {kind})"

    def is_label_studio(self, url: str) -> bool:
        """True when `url` points at the Label Studio origin (the only place the key goes)."""
        return origin(url) == origin(self.base_url)

    def headers(self, force_refresh: bool = False) -> dict[str, str]:
        """The Authorization header to send to Label Studio."""
        if not self.is_personal_access_token:
            return {"Authorization": f"Token {self._api_key}"}
        with self._lock:
            if force_refresh or self._access is None or time.time() > self._access_expires:
                self._refresh()
            return {"Authorization": f"Bearer {self._access}"}

    def _refresh(self) -> None:
        try:
            response = self._session.post(f"{self.base_url}/api/token/refresh/",
                                          json={"refresh": self._api_key},
                                          timeout=REFRESH_TIMEOUT_S)
        except requests.RequestException as exc:
            raise LabelStudioAuthError(
                f"could not reach Label Studio at {self.base_url} to refresh the personal "
                f"access token: {type(exc).__name__}") from None
        if response.status_code != 200:
            # The body may echo the token; report the status only.
            raise LabelStudioAuthError(
                f"Label Studio refused the personal access token (HTTP {response.status_code}); "
                "create a new one under Account & Settings and set LABEL_STUDIO_API_KEY")
        access = response.json().get("access", "")
        claims = _jwt_claims(access) or {}
        expires = float(claims.get("exp", time.time() + 60))
        self._access = access
        self._access_expires = expires - REFRESH_MARGIN_S
        logger.debug("refreshed Label Studio access token")
