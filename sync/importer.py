"""Import blobs as Label Studio tasks, exactly once, surviving restarts.

Label Studio itself holds the record: every task the sync creates carries its blob key, etag
and URL expiry in its data. A sync process starts by reading those back (one keyset-paged walk
of the project's tasks) and then plans against them, so killing it at any moment and starting
it again re-imports nothing that Label Studio committed and misses nothing it did not.

With a `StateCache` (sync/state.py) a start reads only the tasks above the id the cache covers
and checks the cache against Label Studio's task count: task ids only grow, so the project's
`task_number` equals the cached count plus the tasks read above it unless tasks were deleted
(or the cache is stale); then, or without a cache, it reads every task back as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from redis.exceptions import RedisError

from sync.plan import BlobInfo, Imported, Plan, plan
from sync.state import Cached, StateCache

logger = logging.getLogger(__name__)

KEY_FIELD = "mlassist_blob"
ETAG_FIELD = "mlassist_etag"
MISSING_FIELD = "mlassist_missing"
EXPIRY_FIELD = "mlassist_url_expires"
PAGE = 1000
COUNT_TRIES = 3  # reads of the task count while tasks keep arriving, then a full read-back
T = TypeVar("T")


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
                 resign_before_s: float = 2 * 24 * 3600,
                 state: StateCache | None = None) -> None:
        self.api = api
        self.project = project
        self.source = source
        self.image_key = image_key
        self.batch = batch
        self.max_bytes = max_bytes
        self.resign_before_s = resign_before_s
        self.state = state
        self.imported: dict[str, Imported] = {}
        self.last_task_id = 0  # the highest task id read back so far
        self.tasks_read = 0  # the project's tasks (anyone's) with ids up to last_task_id
        self._unsaved: dict[str, Imported] = {}  # patched, not yet written to the cache

    def load_state(self) -> int:
        """Read back what earlier runs imported: from the cache and the tasks above what it
        covers when the cache agrees with Label Studio, else every task's own data."""
        cached = self._cache(lambda state: state.load())
        if cached is not None:
            if self._catch_up(cached):
                return len(self.imported)
            self.imported, self.last_task_id, self.tasks_read = {}, 0, 0
        self._read_tasks_after(0)
        if self.state is not None:
            created = str(self.api.project(self.project).get("created_at"))
            self._cache(lambda state: state.replace(self.imported, self.last_task_id,
                                                    self.tasks_read, created))
        return len(self.imported)

    def _catch_up(self, cached: Cached) -> bool:
        """Start from the cache plus the tasks above it; False if Label Studio disagrees."""
        self.imported = cached.entries
        self.last_task_id, self.tasks_read = cached.covered, cached.count
        found = self._read_tasks_after(self.last_task_id)
        for _ in range(COUNT_TRIES):
            record = self.api.project(self.project)
            if str(record.get("created_at")) != cached.created:
                logger.warning("project %s: the cached sync state is another project's "
                               "(created %s, not %s): reading all tasks back", self.project,
                               cached.created, record.get("created_at"))
                return False
            number = int(record.get("task_number") or 0)
            if number == self.tasks_read:
                self._cache(lambda state: state.extend(found, self.last_task_id,
                                                       self.tasks_read))
                return True
            if number < self.tasks_read:
                logger.warning("project %s: Label Studio holds %d tasks, the cached sync "
                               "state and the tasks above it %d (tasks were deleted): reading "
                               "all tasks back", self.project, number, self.tasks_read)
                return False
            found.update(self._read_tasks_after(self.last_task_id))  # created meanwhile
        logger.warning("project %s: tasks keep arriving while the sync state is checked: "
                       "reading all tasks back", self.project)
        return False

    def _read_tasks_after(self, after: int) -> dict[str, Imported]:
        """Learn the sync's tasks with ids above `after` (keyset walk; Label Studio's task ids
        only grow, so this also finds the ids of tasks this process imported)."""
        found: dict[str, Imported] = {}
        while True:
            tasks = self.api.task_page(self.project, after, PAGE)
            if not tasks:
                break
            for task in tasks:
                data = task.get("data") or {}
                key = data.get(KEY_FIELD)
                if isinstance(key, str):
                    found[key] = Imported(int(task["id"]), str(data.get(ETAG_FIELD)),
                                          bool(data.get(MISSING_FIELD)), _expiry(data))
            after = max(int(t["id"]) for t in tasks)
            self.last_task_id = max(self.last_task_id, after)
            self.tasks_read += len(tasks)
        self.imported.update(found)
        return found

    def _learn_new_tasks(self) -> None:
        """Read the tasks above the last one read (ids of this process's imports), cache them."""
        found = self._read_tasks_after(self.last_task_id)
        self._cache(lambda state: state.extend(found, self.last_task_id, self.tasks_read))

    def _advance_past(self, new_ids: list[int], imported: int) -> None:
        """After a pass's imports, move the cache's covered id past them, so the next start
        reads none of them back: directly when Label Studio's task count shows that the new
        tasks are the only ones above the covered id, else by reading the tasks above it."""
        self._flush()
        number = int(self.api.project(self.project).get("task_number") or 0)
        if len(new_ids) == imported and number == self.tasks_read + imported:
            self.last_task_id = max(self.last_task_id, *new_ids)
            self.tasks_read = number
            self._cache(lambda state: state.extend({}, self.last_task_id, self.tasks_read))
        else:
            self._learn_new_tasks()

    def _cache(self, use: Callable[[StateCache], T]) -> T | None:
        """Use the cache if there is one; Redis failing turns it off for this process (the
        sync goes on from Label Studio alone)."""
        if self.state is None:
            return None
        try:
            return use(self.state)
        except (RedisError, ValueError, KeyError) as exc:  # down, or an unreadable cache
            logger.warning("project %s: sync state cache off for this run (%s: %s); "
                           "Label Studio is read instead", self.project, type(exc).__name__,
                           exc)
            self.state = None
            return None

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
            # not known (Label Studio's import did not return ids); read the new tasks back,
            # then plan again.
            self._learn_new_tasks()
            todo = plan(listed, self.imported, self.max_bytes)
        report.skipped = todo.skipped
        for key, reason in todo.skipped.items():
            logger.warning("blob %s skipped: %s", key, reason)
        new_ids: list[int] = []
        for start in range(0, len(todo.new), self.batch):
            if stop():
                break
            chunk = todo.new[start:start + self.batch]
            tasks = [{"data": self._task_data(blob)} for blob in chunk]
            ids = self.api.import_tasks(self.project, tasks) or [-1] * len(chunk)
            for blob, task, task_id in zip(chunk, tasks, ids, strict=True):
                # An id of -1 (Label Studio did not say) is learnt by the next read-back.
                self._record(blob.key, Imported(task_id, blob.etag, False,
                                                _expiry(task["data"])))
            new_ids += [task_id for task_id in ids if task_id >= 0]
            report.imported += len(chunk)
            if progress is not None:
                progress(report.imported, len(todo.new))
        patching = bool(todo.changed or todo.returned or todo.vanished) or self._resign_due()
        if patching:
            self._cache(lambda state: state.begin_patches())
        try:
            self._patch_all(todo, report, stop)
        finally:
            self._flush()  # what was patched; a pass that failed stays marked dirty
        if patching:
            self._cache(lambda state: state.end_patches())
        if report.imported and self.state is not None and not stop():
            self._advance_past(new_ids, report.imported)
        report.seconds = round(time.monotonic() - started, 2)
        return report

    def _patch_all(self, todo: Plan, report: PassReport, stop: Callable[[], bool]) -> None:
        for task_id, blob in todo.changed + todo.returned:
            if stop():
                break
            data = self._patch(task_id, self._task_data(blob))
            self._record(blob.key, Imported(task_id, blob.etag, False, _expiry(data)))
            if (task_id, blob) in todo.returned:
                report.returned += 1
            else:
                report.updated += 1
        vanished = set(todo.vanished)
        keys = {known.task_id: key for key, known in self.imported.items()
                if known.task_id in vanished}
        for task_id in todo.vanished:
            if stop() or task_id < 0:
                continue
            key = keys[task_id]
            etag = self.imported[key].etag
            data = self._patch(task_id, {KEY_FIELD: key, ETAG_FIELD: etag, MISSING_FIELD: True})
            self._record(key, Imported(task_id, etag, True, _expiry(data)))
            report.flagged_missing += 1
        report.resigned = self._resign(stop)

    def _patch(self, task_id: int, data: dict[str, Any]) -> dict[str, Any]:
        """Write the sync's own keys over the task's current data (Label Studio replaces
        `data` whole, and others keep keys there too, e.g. `mlassist assign`)."""
        owned = (self.image_key, KEY_FIELD, ETAG_FIELD, MISSING_FIELD, EXPIRY_FIELD)
        current = self.api.task_data(self.project, task_id)
        data = {**current, **{k: data[k] for k in owned if k in data}}
        self.api.update_task(task_id, data=data)
        return data

    def _record(self, key: str, known: Imported) -> None:
        """Keep a patched task's state; the cache gets it a batch at a time."""
        self.imported[key] = known
        self._unsaved[key] = known
        if len(self._unsaved) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        unsaved, self._unsaved = self._unsaved, {}
        if unsaved:
            self._cache(lambda state: state.put(unsaved.items()))

    def _resign_due(self) -> list[tuple[str, Imported]]:
        """The tasks whose URL expires within `resign_before_s` (and whose blob is there)."""
        soon = time.time() + self.resign_before_s
        return [(key, known) for key, known in self.imported.items()
                if known.task_id >= 0 and known.expires and known.expires < soon
                and not known.missing]

    def _resign(self, stop: Callable[[], bool]) -> int:
        """Fresh URLs for tasks whose URL expires within `resign_before_s`."""
        count = 0
        for key, known in self._resign_due():
            if stop():
                break
            url, new_expiry = self.source.url_for(key.split("/", 1)[-1])
            data = self._patch(known.task_id, {
                self.image_key: url, KEY_FIELD: key, ETAG_FIELD: known.etag,
                MISSING_FIELD: False, EXPIRY_FIELD: new_expiry})
            self._record(key, Imported(known.task_id, known.etag, False, _expiry(data)))
            count += 1
        return count


def _expiry(data: dict[str, Any]) -> float:
    return float(data.get(EXPIRY_FIELD) or 0)
