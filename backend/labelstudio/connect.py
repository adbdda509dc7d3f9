"""Connecting the backend to a Label Studio project, idempotently (`mlassist connect`)."""

from __future__ import annotations

import base64
from xml.sax.saxutils import quoteattr

from backend.core.errors import LabelConfigError
from backend.core.settings import Settings
from backend.labelstudio.client import LabelStudioAPI
from backend.labelstudio.label_config import parse_label_config

SECRET_HEADER = "X-MLAssist-Secret"  # noqa: S105 - a header name, not a secret
WEBHOOK_ACTIONS = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
                   "TASKS_CREATED", "PROJECT_UPDATED"]


def box_config(labels: list[str]) -> str:
    """A rectangle-labeling config for these labels."""
    body = "".join(f"<Label value={quoteattr(label)}/>" for label in labels)
    return ('<View><Image name="image" value="$image"/>'
            f'<RectangleLabels name="label" toName="image">{body}</RectangleLabels></View>')


def webhook_headers(settings: Settings) -> dict[str, str]:
    """What Label Studio's webhook must send to pass /webhook's check."""
    if settings.webhook_secret:
        return {SECRET_HEADER: settings.webhook_secret}
    if settings.auth_enabled:
        pair = f"{settings.basic_auth_user}:{settings.basic_auth_pass}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    return {}


def connect_project(settings: Settings, api: LabelStudioAPI, project: int,
                    labels: list[str] | None = None) -> list[str]:
    """Set up a project for MLAssist; returns one line per change made (none on a re-run)."""
    changes: list[str] = []
    info = api.project(project)
    if labels:
        current = info.get("label_config") or ""
        try:
            servable = parse_label_config(current)
            same = sorted(v for t in servable.targets for v in t.label_values) == sorted(labels)
        except LabelConfigError:
            same = False
        if not same:
            api.update_project(project, label_config=box_config(labels))
            changes.append(f"label config set to boxes of: {', '.join(labels)}")
    else:
        parse_label_config(info.get("label_config") or "")  # say now if it cannot be served

    wanted = {"start_training_on_annotation_update": False,
              "evaluate_predictions_automatically": False}
    differing = {k: v for k, v in wanted.items() if info.get(k) != v}
    if differing:
        # Per-annotation START_TRAINING would force a training each time; pre-labels come
        # from push-back and TASKS_CREATED instead of synchronous calls while listing tasks.
        api.update_project(project, **differing)
        changes.append(f"project settings: {differing}")

    url = settings.backend_public_url.rstrip("/")
    if not any((b.get("url") or "").rstrip("/") == url for b in api.ml_backends(project)):
        fields: dict[str, object] = {"project": project, "url": url, "title": "MLAssist",
                                     "is_interactive": False}
        if settings.auth_enabled:
            fields.update(auth_method="BASIC_AUTH", basic_auth_user=settings.basic_auth_user,
                          basic_auth_pass=settings.basic_auth_pass)
        api.create_ml_backend(**fields)
        changes.append(f"connected the ML backend at {url}")

    hook_url = f"{url}/webhook"
    headers = webhook_headers(settings)
    hooks = [h for h in api.webhooks(project) if (h.get("url") or "").rstrip("/") == hook_url]
    if not hooks:
        api.create_webhook(project=project, url=hook_url, send_payload=True,
                           send_for_all_actions=False, actions=WEBHOOK_ACTIONS,
                           headers=headers, is_active=True)
        changes.append(f"registered the webhook {hook_url}")
    for hook in hooks:
        if (hook.get("headers") or {}) != headers or not hook.get("is_active", True):
            api.update_webhook(int(hook["id"]), headers=headers, is_active=True)
            changes.append(f"webhook {hook['id']}: now sends the secret header")
    return changes
