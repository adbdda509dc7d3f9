"""What a sync pass must do: a pure function of what the source lists and what is imported.

The idempotency key of a blob is `container/name`. A new key becomes a task; a changed etag is
an update of its task; a key that is no longer listed is flagged on its task (never deleted).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BlobInfo:
    """One listed blob (or file)."""

    container: str
    name: str
    etag: str
    size: int

    @property
    def key(self) -> str:
        return f"{self.container}/{self.name}"


@dataclass(frozen=True, slots=True)
class Imported:
    """What a task records about its blob (kept in the task's data, so Label Studio holds it):
    its task (-1 until read back), etag, missing flag and when its URL expires (0: unknown)."""

    task_id: int
    etag: str
    missing: bool = False
    expires: float = 0.0


@dataclass
class Plan:
    new: list[BlobInfo] = field(default_factory=list)
    changed: list[tuple[int, BlobInfo]] = field(default_factory=list)
    vanished: list[int] = field(default_factory=list)
    returned: list[tuple[int, BlobInfo]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.new or self.changed or self.vanished or self.returned)


def plan(listed: Iterable[BlobInfo], imported: Mapping[str, Imported],
         max_bytes: int | None = None) -> Plan:
    """Compare a listing with the imported state; nothing here does I/O."""
    result = Plan()
    seen: set[str] = set()
    for blob in listed:
        if blob.key in seen:
            continue
        seen.add(blob.key)
        if blob.size == 0:
            result.skipped[blob.key] = "empty file (0 bytes)"
            continue
        if max_bytes is not None and blob.size > max_bytes:
            result.skipped[blob.key] = f"{blob.size} bytes, over MAX_IMAGE_BYTES ({max_bytes})"
            continue
        known = imported.get(blob.key)
        if known is None:
            result.new.append(blob)
        elif known.missing:
            result.returned.append((known.task_id, blob))
        elif known.etag != blob.etag:
            result.changed.append((known.task_id, blob))
    for key, known in imported.items():
        if key not in seen and not known.missing:
            result.vanished.append(known.task_id)
    return result
