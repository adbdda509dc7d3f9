"""What every benchmark script shares: the machine it ran on, and how results are written."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine() -> dict:
    return {"python": platform.python_version(), "cpu": platform.machine(),
            "cores": os.cpu_count(), "device": "cpu"}


def stop_cleanly_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so a killed benchmark still stops the servers it started."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def emit(report: dict, out: Path | None) -> None:
    """Print the report as JSON, and write it to `out` when given."""
    text = json.dumps(report, indent=2)
    if out:
        out.write_text(text + "\n")
    print(text)
