"""The `mlassist` command. Each subcommand's parser and handler live together in one module
of this package (serve, info, models, jobs, coco, project, review, sync, weights); this file
only gathers them, reads the settings once, and turns MLAssistError into one line and exit
status 2."""

from __future__ import annotations

import argparse
import sys

from backend.cli import coco, info, jobs, models, project, review, serve, sync, weights
from backend.cli.output import configure_logging
from backend.core.errors import MLAssistError
from backend.core.settings import Settings

DESCRIPTION = "MLAssist: ML-assisted bounding-box labeling for Label Studio."
SUBCOMMAND_MODULES = (serve, info, models, jobs, coco, project, review, sync, weights)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every module registers its subcommands."""
    parser = argparse.ArgumentParser(prog="mlassist", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mlassist` console script."""
    args = build_parser().parse_args(argv)
    try:
        if not args.settings:  # settings, archs: nothing from the environment needed
            return int(args.run(None, args) or 0)
        settings = Settings.from_env()
        configure_logging(settings.log_level)
        return int(args.run(settings, args) or 0)
    except MLAssistError as exc:
        print(f"mlassist: {exc}", file=sys.stderr)  # noqa: T201 - CLI output
        return 2
