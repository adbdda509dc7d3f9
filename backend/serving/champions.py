"""Which model serves a project: its registry champion, else the base model (MODEL_WEIGHTS).

The champion pointer is re-read at most every CHAMPION_TTL_S seconds, so a promotion (or a
rollback) made by a worker on another machine reaches the server without a restart; loaded
detectors are kept per version, a few at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any

from backend.model.detector import Detector, DetectorHolder, checkpoint_detector
from backend.model.registry import Registry

logger = logging.getLogger(__name__)

CHAMPION_TTL_S = 5.0
LOADED_VERSIONS = 4


def project_id(value: object) -> int | None:
    """The project id in Label Studio's `project` field ("<id>.<created timestamp>")."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        head = value.split(".", 1)[0]
        if head.isdecimal() and len(head) < 12:
            return int(head)
    return None


class ChampionServing:
    """Resolves a project to its champion record and a loaded detector."""

    def __init__(self, registry: Registry | None, base: DetectorHolder, device: str,
                 runtime: str = "torch", threads: int = 0) -> None:
        self.registry = registry
        self.base = base
        self.device = device
        self.runtime = runtime
        self.threads = threads
        self._lock = threading.Lock()
        self._records: dict[int, tuple[float, dict[str, Any] | None]] = {}
        self._loaded: OrderedDict[tuple[int, str], Detector] = OrderedDict()

    def champion(self, project: int | None) -> dict[str, Any] | None:
        """The project's champion record (cached briefly), or None to use the base model."""
        if project is None or self.registry is None:
            return None
        now = time.monotonic()
        with self._lock:
            cached = self._records.get(project)
            if cached is not None and now - cached[0] < CHAMPION_TTL_S:
                return cached[1]
        try:
            record = self.registry.champion(project)
        except Exception as exc:  # noqa: BLE001 - a registry outage must not stop serving
            logger.warning("registry unreadable for project %s (%s); serving the base model",
                           project, exc)
            record = cached[1] if cached is not None else None
        with self._lock:
            self._records[project] = (now, record)
        return record

    def version(self, project: int | None) -> str:
        record = self.champion(project)
        return str(record["version"]) if record else self.base.version

    def class_names(self, project: int | None) -> list[str] | None:
        record = self.champion(project)
        if record:
            return list(record["class_names"])
        detector = self.base.peek()
        return detector.class_names if detector else None

    def detector(self, project: int | None, base_wait: float) -> Detector:
        """The detector for a project; loads a champion checkpoint on first use."""
        record = self.champion(project)
        if record is None or project is None or self.registry is None:
            return self.base.get(timeout=base_wait)
        key = (project, str(record["version"]))
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
        try:
            path = self.registry.checkpoint_path(project, key[1])
            detector = checkpoint_detector(path, key[1], self.device, self.runtime,
                                           self.threads)
        except Exception as exc:  # noqa: BLE001 - pruned, store down, corrupt: keep serving
            logger.error("champion %s of project %s cannot be loaded (%s); serving the base "
                         "model", key[1], project, exc)
            return self.base.get(timeout=base_wait)
        with self._lock:
            self._loaded[key] = detector
            while len(self._loaded) > LOADED_VERSIONS:
                self._loaded.popitem(last=False)
        logger.info("project %s: serving champion %s", project, key[1])
        return detector
