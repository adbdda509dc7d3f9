"""What every benchmark script shares: the machine it ran on, and how results are written."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path


def machine() -> dict:
    return {"python": platform.python_version(), "cpu": platform.machine(),
            "cores": os.cpu_count(), "device": "cpu"}


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (gunicorn master + workers), as /proc lists them."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        found.append(current)
        pending.extend(int(child) for child in children)
    return found


def rss_kb(pid: int) -> int:
    """Resident memory of one process, in kB (0 once it is gone)."""
    with contextlib.suppress(OSError, StopIteration):
        status = Path(f"/proc/{pid}/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines()
                    if line.startswith("VmRSS:"))
    return 0


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
