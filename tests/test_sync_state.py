"""The sync's state cache (sync/state.py) against a real Redis and a real Label Studio: a start
with the cache reads only the tasks above what it covers, a missing, foreign or dirty cache and
deleted tasks send it back to reading everything, and a Redis that is down changes nothing but
the speed. Label Studio calls are counted at our adapter (LabelStudioAPI)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from label_studio_sdk import LabelStudio
from redis import Redis

from backend.demo.localstack import free_port
from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth
from sync.importer import KEY_FIELD, MISSING_FIELD, Importer
from sync.plan import BlobInfo, Imported
from sync.state import StateCache, pack, unpack
from tests.labels import CONFIG
from tests.labelstudio import ADMIN_TOKEN, LabelStudioServer
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

WEEK = 7 * 24 * 3600


class Listing:
    """A source whose listing the test sets (the Source protocol is our adapter boundary)."""

    def __init__(self, names: list[str]) -> None:
        self.etags = {name: "0x1" for name in names}

    def list(self) -> Iterator[BlobInfo]:
        for name, etag in self.etags.items():
            yield BlobInfo("box", name, etag, 1000)

    def url_for(self, name: str) -> tuple[str, float]:
        return f"http://127.0.0.1:9/box/{name}?sig=x", time.time() + WEEK


class CountingAPI:
    """LabelStudioAPI with a tally of its calls and of the tasks its keyset pages returned."""

    def __init__(self, api: LabelStudioAPI) -> None:
        self.api = api
        self.calls: Counter[str] = Counter()
        self.tasks_read = 0

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.api, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            found = method(*args, **kwargs)
            if name == "task_page":
                self.tasks_read += len(found)
            return found
        return call


@pytest.fixture
def make(label_studio: LabelStudioServer, redis_server: RedisServer,
         redis_db: Redis) -> Callable[..., Importer]:
    def importer(project: int, source: Listing, cache: bool = True,
                 redis_url: str | None = None) -> Importer:
        api = CountingAPI(LabelStudioAPI(LabelStudioAuth(label_studio.url, ADMIN_TOKEN)))
        state = StateCache.from_url(redis_url or redis_server.url, project) if cache else None
        return Importer(api, project, source, batch=200, state=state)
    return importer


def reads(importer: Importer) -> int:
    return importer.api.tasks_read  # type: ignore[no-any-return]


def keys_in(client: LabelStudio, project: int) -> Counter:
    return Counter(t.data.get(KEY_FIELD) for t in client.tasks.list(project=project,
                                                                      page_size=1000))


def test_pack_round_trips_an_etag_with_spaces() -> None:
    known = Imported(12, '"0x8D a b"', True, 1712345678.25)
    assert unpack(pack(known)) == known


def test_a_start_with_the_cache_reads_only_the_tasks_above_it(
        make: Callable[..., Importer], client: LabelStudio, redis_db: Redis) -> None:
    project = client.projects.create(title="sync state restart", label_config=CONFIG).id
    source = Listing([f"a/{i:04d}.jpg" for i in range(1500)])
    first = make(project, source)
    assert first.load_state() == 0
    assert first.run_pass().imported == 1500
    # The imports' own task ids: the cache covers all 1500, with nothing read back.
    assert redis_db.hlen(f"mlassist:sync:{project}:blobs") == 1500
    assert reads(first) == 0 and first.api.calls["project"] == 2  # start, and the count check
    assert make(project, source).load_state() == 1500

    # 30 blobs imported by a sync without the cache, and 5 tasks from someone else.
    source.etags.update({f"b/{i}.jpg": "0x1" for i in range(30)})
    uncached = make(project, source, cache=False)
    assert uncached.load_state() == 1500
    assert uncached.run_pass().imported == 30
    first.api.import_tasks(project, [{"data": {"image": f"http://x/{i}.jpg"}}
                                     for i in range(5)])
    restarted = make(project, source)
    assert restarted.load_state() == 1530
    assert reads(restarted) == 35  # the new tasks only, not 1,535
    assert restarted.api.calls["project"] == 1
    assert all(known.task_id > 0 for known in restarted.imported.values())
    assert restarted.run_pass().to_dict() | {"seconds": 0, "listed": 0} == {
        "listed": 0, "imported": 0, "updated": 0, "flagged_missing": 0, "returned": 0,
        "resigned": 0, "skipped": {}, "seconds": 0}

    # Patches reach the cache: a changed blob and a vanished one, seen from a cached start.
    source.etags["a/0001.jpg"] = "0x2"
    del source.etags["a/0002.jpg"]
    report = restarted.run_pass()
    assert (report.updated, report.flagged_missing) == (1, 1)
    again = make(project, source)
    assert again.load_state() == 1530 and reads(again) == 0
    assert again.imported["box/a/0002.jpg"].missing
    assert again.run_pass().to_dict()["updated"] == 0  # nothing left to do: cache is current
    source.etags["a/0002.jpg"] = "0x1"
    back = make(project, source)
    back.load_state()
    assert back.run_pass().returned == 1
    tasks = {t.data[KEY_FIELD]: t for t in client.tasks.list(project=project, page_size=2000)
             if KEY_FIELD in t.data}
    assert tasks["box/a/0002.jpg"].data[MISSING_FIELD] is False


def test_a_missing_foreign_or_dirty_cache_is_rebuilt_from_label_studio(
        make: Callable[..., Importer], client: LabelStudio, redis_db: Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    project = client.projects.create(title="sync state rebuild", label_config=CONFIG).id
    source = Listing([f"{i:03d}.jpg" for i in range(300)])
    make(project, source).run_pass()
    meta = f"mlassist:sync:{project}:meta"

    redis_db.delete(f"mlassist:sync:{project}:blobs", meta)
    caplog.set_level(logging.INFO)
    gone = make(project, source)
    assert gone.load_state() == 300 and reads(gone) == 300
    assert "no cached sync state" in caplog.text
    assert redis_db.hlen(f"mlassist:sync:{project}:blobs") == 300

    redis_db.hset(meta, "created", "2001-01-01T00:00:00Z")  # another Label Studio's project
    foreign = make(project, source)
    assert foreign.load_state() == 300 and reads(foreign) == 300
    assert "another project's" in caplog.text
    cached = make(project, source)
    assert cached.load_state() == 300 and reads(cached) == 0  # rewritten, trusted again

    StateCache(redis_db, project).begin_patches()  # a pass killed while patching
    dirty = make(project, source)
    assert dirty.load_state() == 300 and reads(dirty) == 300
    assert "being patched" in caplog.text
    assert dirty.run_pass().imported == 0


def test_a_task_deleted_in_label_studio_is_noticed_and_its_blob_imported_once(
        make: Callable[..., Importer], client: LabelStudio) -> None:
    project = client.projects.create(title="sync state deleted", label_config=CONFIG).id
    source = Listing([f"{i:02d}.jpg" for i in range(20)])
    make(project, source).run_pass()
    victim = next(t for t in client.tasks.list(project=project, page_size=100)
                  if t.data[KEY_FIELD] == "box/07.jpg")
    client.tasks.delete(id=victim.id)

    restarted = make(project, source)
    assert restarted.load_state() == 19
    assert reads(restarted) == 19  # nothing above the cache, count 19 != 20: all read back
    assert restarted.run_pass().imported == 1
    counts = keys_in(client, project)
    assert len(counts) == 20 and set(counts.values()) == {1}
    settled = make(project, source)
    assert settled.load_state() == 20 and reads(settled) == 0
    assert settled.run_pass().imported == 0


def test_redis_down_falls_back_to_label_studio(
        make: Callable[..., Importer], client: LabelStudio,
        caplog: pytest.LogCaptureFixture) -> None:
    project = client.projects.create(title="sync state no redis", label_config=CONFIG).id
    source = Listing([f"{i:02d}.jpg" for i in range(40)])
    down = f"redis://127.0.0.1:{free_port()}/0"
    first = make(project, source, redis_url=down)
    assert first.load_state() == 0
    assert first.run_pass().imported == 40
    assert first.state is None and "sync state cache off" in caplog.text
    again = make(project, source, redis_url=down)
    assert again.load_state() == 40 and reads(again) == 40
    assert again.run_pass().imported == 0
    assert set(keys_in(client, project).values()) == {1}
