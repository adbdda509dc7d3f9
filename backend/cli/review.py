"""`mlassist review`: the suspected label errors of a project, worst first."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from backend.cli.output import add_command, labelstudio_api, out
from backend.core.errors import MLAssistError
from backend.core.settings import Settings
from backend.model.registry import open_registry


def register(commands: Any) -> None:
    review = add_command(commands, "review", run_review,
                         "list the labeled tasks most likely mislabeled (after a review ran)")
    review.add_argument("--project", type=int, required=True, help="Label Studio project id")
    review.add_argument("--top", type=int, default=20, help="tasks to list (default 20)")
    review.add_argument("--run", action="store_true", dest="now",  # `run` is the handler
                        help="review now, in the foreground, with the champion and earlier "
                             "versions (a promotion queues one on the workers anyway)")
    review.add_argument("--json", action="store_true", help="print the report as JSON")


def _run_now(settings: Settings, project: int) -> None:
    from backend.media.images import ImageFetcher
    from backend.model.dataset import ImageCache
    from backend.model.detector import resolve_device
    from backend.tools.review import review_project

    fetcher = ImageFetcher.from_settings(settings)
    cache = ImageCache(settings.image_cache_dir, fetcher, settings.max_image_pixels)
    review_project(project, settings, labelstudio_api(settings), cache, open_registry(settings),
                   device=resolve_device(settings.device))


def _print(report: dict[str, Any], top: int) -> None:
    from backend.tools.review import reasons_text

    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(report.get("created_at", 0)))
    kinds = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in report["issues_by_kind"].items())
    missed = ", ".join(f"{n} ({why})" for why, n in report["not_scored"].items() if n)
    out(f"review of {when} by {report['champion']}: {report['scored']} of "
        f"{report['labeled_tasks']} labeled tasks scored"
        + (f"; not scored: {missed}" if missed else ""))
    out(f"{report['flagged']} flagged (issue score >= {report['min_issue']:g}): {kinds}")
    out(f"{'task':>8}  {'score':>5}  reasons")
    for task in report["tasks"][:top]:
        if not task["issues"]:
            break
        out(f"{task['task']:>8}  {task['score']:>5.2f}  {reasons_text(task)}")


def run_review(settings: Settings, args: argparse.Namespace) -> None:
    if args.now:
        _run_now(settings, args.project)
    report = open_registry(settings).review(args.project)
    if report is None:
        raise MLAssistError(f"project {args.project} has no review yet: one runs after each "
                            "promoted training round, or run `mlassist review --run`")
    if args.json:
        out(json.dumps({**report, "tasks": report["tasks"][:args.top]}, indent=1))
    else:
        _print(report, args.top)
