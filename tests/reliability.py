"""The reliability tally: what the fault and bad-input tests tried, and what they found lost.

Tests call `fault_survived`, `inputs_tried`, `labels_lost` and `duplicates` after checking;
at the end of the session (tests/conftest.py) the tally is written to
test-artifacts/reliability.json, and `.ci/run` prints it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

_lock = threading.Lock()
_tally: dict[str, object] = {"faults_survived": [], "inputs_tried": 0, "labels_lost": 0,
                             "duplicates": 0}


def fault_survived(name: str) -> None:
    """A real fault (a kill, a restart, an outage) after which everything was checked."""
    with _lock:
        faults = _tally["faults_survived"]
        assert isinstance(faults, list)
        faults.append(name)


def inputs_tried(count: int) -> None:
    """Malformed or hostile inputs sent, each answered as the test expected."""
    with _lock:
        _tally["inputs_tried"] = int(str(_tally["inputs_tried"])) + count


def labels_lost(count: int) -> None:
    """Submitted labels missing from the next training's dataset (0 expected)."""
    with _lock:
        _tally["labels_lost"] = int(str(_tally["labels_lost"])) + count


def duplicates(count: int) -> None:
    """Duplicate tasks or predictions found after a fault (0 expected)."""
    with _lock:
        _tally["duplicates"] = int(str(_tally["duplicates"])) + count


def write(path: Path) -> None:
    with _lock:
        faults = list(_tally["faults_survived"])  # type: ignore[call-overload]
        summary = {**_tally, "faults_survived": len(faults), "faults": faults}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
