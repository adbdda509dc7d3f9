"""The typed exceptions of MLAssist; the HTTP layer turns them into JSON errors."""

from __future__ import annotations


class MLAssistError(Exception):
    """Base class; `status` is the HTTP status the error maps to at the boundary."""

    status = 500


class SettingsError(MLAssistError):
    """A missing or malformed setting; start-up stops with this one line."""


class BadRequest(MLAssistError):
    """The request body is malformed; the message says what is wrong."""

    status = 400


class LabelConfigError(MLAssistError):
    """The project's label config cannot be served by a box detector."""

    status = 422


class ImageError(MLAssistError):
    """One task's image could not be fetched or decoded; the task gets an empty result."""

    status = 422

    def __init__(self, message: str, reason: str = "image") -> None:
        super().__init__(message)
        self.reason = reason


class ModelError(MLAssistError):
    """The detector could not be built or loaded (missing weights, bad checkpoint)."""

    status = 503


class LabelStudioAuthError(MLAssistError):
    """Label Studio refused or could not check LABEL_STUDIO_API_KEY."""

    status = 502


class LabelStudioError(MLAssistError):
    """Label Studio is unreachable or answered something unexpected (often transient)."""

    status = 502


class NotEnoughLabels(MLAssistError):
    """A training round cannot run yet; the message says how many more labels it needs."""

    status = 409


class HandedBack(MLAssistError):
    """A job stopped early because its worker is shutting down; it is queued again."""

    status = 503
