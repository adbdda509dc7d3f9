"""The sync's known-blob state, cached in Redis so that a restart reads only new tasks back.

Label Studio holds the record (sync/importer.py); this cache only spares reading all of it.
Per project, two hashes:

- `mlassist:sync:<project>:blobs`: blob key -> "task_id missing expiry etag" (etag last: it is
  the one free-form part);
- `mlassist:sync:<project>:meta`: `covered` (the highest task id read back), `count` (how many
  of the project's tasks, the sync's and anyone's, have ids up to `covered`), `created` (the
  project's creation time: a cache of another Label Studio's project with the same id is
  foreign), `format`, and `dirty` while a pass is patching tasks (a process killed then may
  have patched a task without recording it, so the next start rebuilds).

Tasks a running sync imports are cached with the ids the import returns; `covered` moves past
them only when Label Studio's task count shows no one else's tasks among them (otherwise the
next walk of the tasks above `covered` reads them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import cast

from redis import Redis

from sync.plan import Imported

logger = logging.getLogger(__name__)

FORMAT = "1"
CHUNK = 5000  # hash fields per HSCAN reply and per pipelined write


def pack(known: Imported) -> str:
    """One cached value: "task_id missing expiry etag"."""
    return f"{known.task_id} {int(known.missing)} {known.expires!r} {known.etag}"


def unpack(value: str) -> Imported:
    """The inverse of `pack`."""
    task_id, missing, expires, etag = value.split(" ", 3)
    return Imported(int(task_id), etag, missing == "1", float(expires))


@dataclass(frozen=True)
class Cached:
    """What the cache held: the blobs and how far into the project's tasks it reaches."""

    entries: dict[str, Imported]
    covered: int
    count: int
    created: str


class StateCache:
    """One project's sync state in Redis (a cache: Label Studio is the record)."""

    def __init__(self, redis: Redis, project: int) -> None:
        self.redis = redis
        self.blobs_key = f"mlassist:sync:{project}:blobs"
        self.meta_key = f"mlassist:sync:{project}:meta"

    @classmethod
    def from_url(cls, redis_url: str, project: int) -> StateCache:
        """A cache on the Redis at `redis_url` (no connection is made until it is used)."""
        return cls(Redis.from_url(redis_url, socket_timeout=30, socket_connect_timeout=3,
                                  decode_responses=True), project)

    def load(self) -> Cached | None:
        """The cached state, or None (logged why) when there is none to trust."""
        meta = cast(dict[str, str], self.redis.hgetall(self.meta_key))
        if not meta:
            logger.info("%s: no cached sync state", self.meta_key)
            return None
        if meta.get("format") != FORMAT or meta.get("dirty"):
            logger.info("%s: cached sync state %s", self.meta_key,
                        "is being patched (a pass was cut short)" if meta.get("dirty")
                        else f"has format {meta.get('format')!r}, not {FORMAT}")
            return None
        entries = {key: unpack(value)
                   for key, value in self.redis.hscan_iter(self.blobs_key, count=CHUNK)}
        return Cached(entries, int(meta["covered"]), int(meta["count"]), meta["created"])

    def replace(self, entries: Mapping[str, Imported], covered: int, count: int,
                created: str) -> None:
        """Rewrite the whole cache (after a full read-back). The meta goes first and comes
        back last, so a rewrite cut short leaves no cache rather than half a one."""
        self.redis.delete(self.meta_key, self.blobs_key)
        self.put(entries.items())
        self.redis.hset(self.meta_key, mapping={"format": FORMAT, "covered": covered,
                                                "count": count, "created": created})

    def extend(self, entries: Mapping[str, Imported], covered: int, count: int) -> None:
        """Add the tasks read above the covered id, then move `covered` past them."""
        self.put(entries.items())
        self.redis.hset(self.meta_key, mapping={"covered": covered, "count": count})

    def put(self, entries: Iterable[tuple[str, Imported]]) -> None:
        """Write entries whose task ids are known, CHUNK fields per pipelined round trip."""
        for chunk in _chunks((key, pack(known)) for key, known in entries
                             if known.task_id >= 0):
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(self.blobs_key, mapping=dict(chunk))
            pipe.execute()

    def begin_patches(self) -> None:
        """Mark the cache as possibly behind Label Studio until `end_patches`."""
        self.redis.hset(self.meta_key, "dirty", "1")

    def end_patches(self) -> None:
        """Every patch so far is recorded: the cache is whole again."""
        self.redis.hdel(self.meta_key, "dirty")


def _chunks(items: Iterable[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    chunk: list[tuple[str, str]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
