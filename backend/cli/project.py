"""`mlassist connect` (the backend and webhook on a project) and `mlassist assign` (each
labeler's batch in a view of their own)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from backend.cli.output import add_command, labelstudio_api, out
from backend.core.errors import MLAssistError
from backend.core.settings import Settings


def register(commands: Any) -> None:
    connect_ = add_command(commands, "connect", run_connect,
                           "connect the backend to a project")
    connect_.add_argument("--project", type=int, required=True)
    connect_.add_argument("--labels", help="comma list of box labels: sets the label config")
    assign = add_command(commands, "assign", run_assign,
                         "give each labeler a batch of tasks (a view)")
    assign.add_argument("--project", type=int, required=True)
    assign.add_argument("--labelers", help="comma list of Label Studio user emails")
    assign.add_argument("--batch", type=int, default=75, help="open tasks per labeler (75)")
    assign.add_argument("--overlap", type=int, default=1,
                        help="labelers per task (default 1: no task in two views)")
    assign.add_argument("--stop", action="store_true", help="stop topping the batches up")


def run_connect(settings: Settings, args: argparse.Namespace) -> None:
    """Connect the backend to a project; running it again changes nothing."""
    from backend.labelstudio.connect import connect_project

    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    for change in connect_project(settings, labelstudio_api(settings), args.project, labels):
        out(change)


def run_assign(settings: Settings, args: argparse.Namespace) -> None:
    """Set (or stop) a project's workload split and top the batches up now."""
    from redis.exceptions import RedisError

    from backend.jobs.queues import JobQueue, ProjectLock, connect
    from backend.tools.assign import top_up

    if not args.stop and not args.labelers:
        args.parser.error("assign needs --labelers (or --stop)")
    labelers = [e.strip() for e in (args.labelers or "").split(",") if e.strip()]
    project = args.project
    redis = connect(settings.redis_url)
    queue = JobQueue(redis)
    try:
        if args.stop:
            queue.set_assignment(project, None)
            out(json.dumps({"project": project, "status": "batches are no longer topped up"}))
            return
        with ProjectLock(redis, f"assign:{project}", wait=120, ttl=settings.job_lock_ttl):
            # Under the lock the workers' top-ups take too, so none works from the old split.
            report = top_up(labelstudio_api(settings), project, labelers, args.batch,
                            args.overlap)
            queue.set_assignment(project, {"labelers": report["labelers"],
                                           "batch": args.batch, "overlap": args.overlap})
        queue.remember_project(project)
    except RedisError as exc:
        raise MLAssistError(f"Redis at REDIS_URL is unreachable ({type(exc).__name__}); "
                            "workers top the batches up through it") from None
    out(json.dumps({"project": project, **report}))
