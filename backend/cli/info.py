"""`mlassist settings` and `mlassist archs`: what can be configured (no environment needed)."""

from __future__ import annotations

import argparse
from typing import Any

from backend.cli.output import add_command, out
from backend.core.catalogue import ARCHITECTURES
from backend.core.settings import settings_markdown


def register(commands: Any) -> None:
    show = add_command(commands, "settings", show_settings,
                       "print the settings and their defaults", settings=False)
    show.add_argument("--markdown", action="store_true", help="as the README's table")
    add_command(commands, "archs", show_archs, "list the detector architectures",
                settings=False)


def show_settings(_settings: None, _args: argparse.Namespace) -> None:
    out(settings_markdown())


def show_archs(_settings: None, _args: argparse.Namespace) -> None:
    for arch in ARCHITECTURES.values():
        out(f"{arch.name:40s} {arch.note}")
