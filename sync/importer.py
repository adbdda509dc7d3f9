"""Import blobs as Label Studio tasks, exactly once, surviving restarts.

Label Studio itself holds the record: every task the sync creates carries its blob key, etag
and URL expiry in its data. A sync process starts by reading those back (one keyset-paged walk
of the project's tasks) and then plans against them, so killing it at any moment and starting
it again re-imports nothing that Label Studio committed and misses nothing it did not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sync.plan import BlobInfo, Imported, plan

logger = logging.getLogger(__name__)

KEY_FIELD = "mlassist_blob"
ETAG_FIELD = "mlassist_etag"
MISSING_FIELD = "mlassist_missing"
EXPIRY_FIELD = "mlassist_url_expires"
PAGE = 1000


class Source(Protocol):
    def list(self) -> Any: ...
    def url_for(self, name: str) -> tuple[str, float]: ...


@dataclass
class PassReport:
    """Counts of one sync pass."""

    listed: int = 0
    imported: int = 0
    updated: int = 0
    flagged_missing: int = 0
    returned: int = 0
    resigned: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Importer:
    """One project's sync state and the passes that move blobs into it."""

    def __init__(self, api: Any, project: int, source: Source, *, image_key: str = "image",
                 batch: int = 500, max_bytes: int | None = None,
                 resign_before_s: float = 2 * 24 * 3600) -> None:
        self.api = api
        self.project = project
        self.source = source
        self.image_key = image_key
        self.batch = batch
        self.max_bytes = max_bytes
        self.resign_before_s = resign_before_s
        self.imported: dict[str, Imported] = {}
        self.data: dict[int, dict[str, Any]] = {}
        self.expiry: dict[int, float] = {}
        self.last_task_id = 0  # the highest task id read back so far

    def load_state(self) -> int:
        """Read back what earlier runs imported (the tasks' own data)."""
        self._read_tasks_after(0)
        return len(self.imported)

    def _read_tasks_after(self, after: int) -> None:
        """Learn the sync's tasks with ids above `after` (keyset walk; Label Studio's task ids
        only grow, so this also finds the ids of tasks this process imported)."""
        while True:
            tasks = self.api.task_page(self.project, after, PAGE)
            if not tasks:
                break
            for task in tasks:
                data = task.get("data") or {}
                key = data.get(KEY_FIELD)
                if isinstance(key, str):
                    self.imported[key] = Imported(int(task["id"]), str(data.get(ETAG_FIELD)),
                                                  bool(data.get(MISSING_FIELD)))
                    self.data[int(task["id"])] = data
                    self.expiry[int(task["id"])] = float(data.get(EXPIRY_FIELD) or 0)
            after = max(int(t["id"]) for t in tasks)
            self.last_task_id = max(self.last_task_id, after)

    def _task_data(self, blob: BlobInfo, missing: bool = False) -> dict[str, Any]:
        url, expires = self.source.url_for(blob.name)
        return {self.image_key: url, KEY_FIELD: blob.key, ETAG_FIELD: blob.etag,
                EXPIRY_FIELD: expires, MISSING_FIELD: missing}

    def run_pass(self, stop: Callable[[], bool] = lambda: False,
                 progress: Callable[[int, int], None] | None = None) -> PassReport:
        """List, plan, act; stops between batches when `stop()` says so."""
        started = time.monotonic()
        report = PassReport()
        listed = list(self.source.list())
        report.listed = len(listed)
        todo = plan(listed, self.imported, self.max_bytes)
        if any(task_id < 0 for task_id, _ in todo.changed + todo.returned) \
                or any(task_id < 0 for task_id in todo.vanished):
            # A blob imported earlier by this process changed or vanished: its task id is
            # not known yet (imports return none); read the new tasks back, then plan again.
            self._read_tasks_after(self.last_task_id)
            todo = plan(listed, self.imported, self.max_bytes)
        report.skipped = todo.skipped
        for key, reason in todo.skipped.items():
            logger.warning("blob %s skipped: %s", key, reason)
        for start in range(0, len(todo.new), self.batch):
            if stop():
                break
            chunk = todo.new[start:start + self.batch]
            tasks = [{"data": self._task_data(blob)} for blob in chunk]
            self.api.import_tasks(self.project, tasks)
            for blob in chunk:  # task ids are read back on the next start
                self.imported[blob.key] = Imported(-1, blob.etag)
            report.imported += len(chunk)
            if progress is not None:
                progress(report.imported, len(todo.new))
        for task_id, blob in todo.changed + todo.returned:
            if stop():
                break
            self._patch(task_id, self._task_data(blob))
            self.imported[blob.key] = Imported(task_id, blob.etag)
            if (task_id, blob) in todo.returned:
                report.returned += 1
            else:
                report.updated += 1
        for task_id in todo.vanished:
            if stop() or task_id < 0:
                continue
            data = {**self.data.get(task_id, {}), MISSING_FIELD: True}
            self._patch(task_id, data)
            blob_key = data.get(KEY_FIELD)
            if isinstance(blob_key, str):
                self.imported[blob_key] = Imported(task_id, str(data.get(ETAG_FIELD)), True)
            report.flagged_missing += 1
        report.resigned = self._resign(stop)
        report.seconds = round(time.monotonic() - started, 2)
        return report

    def _patch(self, task_id: int, data: dict[str, Any]) -> None:
        """Write the sync's own keys over the task's current data (Label Studio replaces
        `data` whole, and others keep keys there too, e.g. `mlassist assign`)."""
        owned = (self.image_key, KEY_FIELD, ETAG_FIELD, MISSING_FIELD, EXPIRY_FIELD)
        data = {**self.api.task_data(task_id), **{k: data[k] for k in owned if k in data}}
        self.api.update_task(task_id, data=data)
        self.data[task_id] = data
        self.expiry[task_id] = float(data.get(EXPIRY_FIELD) or 0)

    def _resign(self, stop: Callable[[], bool]) -> int:
        """Fresh URLs for tasks whose URL expires within `resign_before_s`."""
        soon = time.time() + self.resign_before_s
        count = 0
        for task_id, expires in list(self.expiry.items()):
            if stop():
                break
            data = self.data.get(task_id) or {}
            if expires and expires < soon and not data.get(MISSING_FIELD):
                name = str(data.get(KEY_FIELD, "")).split("/", 1)[-1]
                url, new_expiry = self.source.url_for(name)
                self._patch(task_id, {**data, self.image_key: url, EXPIRY_FIELD: new_expiry})
                count += 1
        return count
