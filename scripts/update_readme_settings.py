"""Rewrite the settings table in README.md from the code (`mlassist settings --markdown`)."""

from __future__ import annotations

import re
from pathlib import Path

from backend.core.settings import settings_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
TABLE = re.compile(r"^\| variable \| default \| meaning \|\n(?:^\|.*\|\n)+", re.MULTILINE)

text = README.read_text()
if not TABLE.search(text):
    raise SystemExit("README.md has no settings table to replace")
README.write_text(TABLE.sub(lambda _: settings_markdown() + "\n", text, count=1))
print("README.md settings table updated")
