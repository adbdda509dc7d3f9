"""`mlassist worker`, `reconcile`, `status` and `healthcheck`: the job side from a shell."""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

from backend.cli.output import add_command, out
from backend.core.settings import Settings

# An idle rq 2.x worker beats once per blocking dequeue, every worker_ttl - 15 = 405 s.
WORKER_HEARTBEAT_MAX_AGE = 480.0


def register(commands: Any) -> None:
    worker = add_command(commands, "worker", run_worker,
                         "run an RQ worker (training, pre-labels)")
    worker.add_argument("--queues", default="training,prelabel,housekeeping",
                        help="comma list; GPU machines: training; others: prelabel,housekeeping")
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    metrics = add_command(commands, "metrics", run_metrics,
                          "serve the queues' and jobs' Prometheus metrics, read from Redis")
    metrics.add_argument("--port", type=int, default=9100, help="port (default 9100)")
    health = add_command(commands, "healthcheck", run_healthcheck,
                         "exit 0 when this container's worker or sync is alive")
    health.add_argument("what", choices=("worker", "sync"))
    reconcile = add_command(commands, "reconcile", run_reconcile,
                            "queue whatever training or push-back is due now")
    reconcile.add_argument("--project", type=int, action="append",
                           help="also consider this project (repeatable)")
    status = add_command(commands, "status", run_status, "a project's labels, models and jobs")
    status.add_argument("--project", type=int, required=True)


def run_worker(settings: Settings, args: argparse.Namespace) -> None:
    from backend.jobs.worker import run_worker as worker_loop

    worker_loop(settings, [q.strip() for q in args.queues.split(",") if q.strip()],
                burst=args.burst)


def run_metrics(settings: Settings, args: argparse.Namespace) -> None:
    from backend.jobs.exporter import run_exporter

    run_exporter(settings, args.port)


def run_reconcile(settings: Settings, args: argparse.Namespace) -> None:
    """Queue whatever is due now (the same pass the workers run periodically)."""
    from backend.jobs.tasks import Context, reconcile

    ctx = Context(settings)
    for project in args.project or []:
        ctx.queue.remember_project(project)
    out(json.dumps(reconcile(ctx)))


def run_status(settings: Settings, args: argparse.Namespace) -> None:
    from backend.jobs.status import project_status
    from backend.jobs.tasks import Context

    ctx = Context(settings)
    out(json.dumps(project_status(args.project, settings, ctx.api, ctx.registry, ctx.queue),
                   indent=1, default=str))


def run_healthcheck(settings: Settings, args: argparse.Namespace) -> int:
    """A container health check: 0 when this host's worker beat in Redis within 8 minutes
    (rq's idle heartbeat interval is under 7), or when the sync touched SYNC_HEARTBEAT_FILE
    within three intervals (at least 5 minutes)."""
    return _sync_alive(settings) if args.what == "sync" else _worker_alive(settings)


def _sync_alive(settings: Settings) -> int:
    if not settings.sync_heartbeat_file:
        out("SYNC_HEARTBEAT_FILE is not set")
        return 1
    try:
        age = time.time() - os.stat(settings.sync_heartbeat_file).st_mtime
    except OSError:
        out("the sync has not started a pass yet")
        return 1
    limit = max(3 * settings.sync_interval, 300)
    out(f"last sync heartbeat {age:.0f} s ago (limit {limit} s)")
    return 0 if age <= limit else 1


def _worker_alive(settings: Settings) -> int:
    from redis.exceptions import RedisError
    from rq import Worker

    from backend.jobs.queues import connect

    host = socket.gethostname()
    now = datetime.now(UTC)
    try:
        workers = Worker.all(connection=connect(settings.redis_url))
    except RedisError as exc:
        out(f"Redis is unreachable ({type(exc).__name__})")
        return 1
    for worker in workers:
        beat = worker.last_heartbeat
        if worker.hostname == host and beat is not None:
            age = (now - beat.replace(tzinfo=beat.tzinfo or UTC)).total_seconds()
            if age <= WORKER_HEARTBEAT_MAX_AGE:
                out(f"worker {worker.name}: heartbeat {age:.0f} s ago")
                return 0
    out(f"no worker on {host} beat in the last {WORKER_HEARTBEAT_MAX_AGE:.0f} s")
    return 1
