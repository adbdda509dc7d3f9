"""What every subcommand shares: its output line and the process's log configuration."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

Handler = Callable[[Any, argparse.Namespace], "int | None"]


def out(text: str) -> None:
    """One line of the command's output, on stdout."""
    sys.stdout.write(text + "\n")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # urllib3 logs full URLs at debug level, query strings (SAS signatures) included.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    # The Azure SDK logs every request and response (about 20 lines per registry read).
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(
        logging.WARNING)


def add_command(commands: Any, name: str, handler: Handler, help: str, *,
                settings: bool = True) -> argparse.ArgumentParser:
    """A subcommand whose `run` is `handler(settings, args)`; `args.parser` is its parser, for
    usage errors."""
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help)
    parser.set_defaults(run=handler, settings=settings, parser=parser)
    return parser


def labelstudio_api(settings: Any) -> Any:
    """A Label Studio client from LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY."""
    from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth

    return LabelStudioAPI(LabelStudioAuth(settings.label_studio_url,
                                          settings.label_studio_api_key))
