"""`mlassist sync`: one pass (or a watching loop) of blobs into a project as tasks."""

from __future__ import annotations

import argparse
import json
from typing import Any

from backend.cli.output import add_command, out
from backend.core.settings import Settings


def register(commands: Any) -> None:
    sync = add_command(commands, "sync", run_sync,
                       "import blobs from Azure Blob Storage as tasks")
    sync.add_argument("--project", type=int, help="the project (default: SYNC_PROJECT)")
    sync.add_argument("--watch", action="store_true",
                      help="keep syncing every SYNC_INTERVAL seconds until stopped")


def run_sync(settings: Settings, args: argparse.Namespace) -> None:
    from sync.service import run_sync as sync_project

    project = args.project or settings.sync_project
    if not project:
        args.parser.error("sync needs --project or SYNC_PROJECT")
    out(json.dumps(sync_project(settings, project, args.watch)))
