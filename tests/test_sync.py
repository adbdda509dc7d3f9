"""Blob sync against a real Azurite and a real Label Studio: initial and incremental imports,
etag changes and deletions, bad blobs, and a sync process SIGKILLed mid-import."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient
from label_studio_sdk import LabelStudio
from redis import Redis

from backend.demo.localstack import free_port
from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth
from backend.media.images import ImageFetcher
from sync.importer import KEY_FIELD, MISSING_FIELD, Importer
from sync.sources import AzureBlobSource
from tests import media
from tests.azurite import Azurite
from tests.labels import CONFIG
from tests.labelstudio import ADMIN_TOKEN, LabelStudioServer
from tests.redis_server import RedisServer
from tests.services import mlassist_bin

pytestmark = pytest.mark.e2e

PNG = media.png(32, 24)


def fill(azurite: Azurite, container: str, names: list[str], data: bytes = PNG) -> None:
    client = BlobServiceClient.from_connection_string(azurite.connection_string)
    box = client.get_container_client(container)
    if not box.exists():
        box.create_container()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: box.upload_blob(n, data, overwrite=True), names))


def keys_in(client: LabelStudio, project: int) -> Counter:
    api_tasks = client.tasks.list(project=project, page_size=1000)
    return Counter(task.data.get(KEY_FIELD) for task in api_tasks)


def importer(label_studio: LabelStudioServer, azurite: Azurite, project: int,
             container: str, **kwargs: object) -> Importer:
    api = LabelStudioAPI(LabelStudioAuth(label_studio.url, ADMIN_TOKEN))
    source = AzureBlobSource(azurite.connection_string, container)
    return Importer(api, project, source, **kwargs)  # type: ignore[arg-type]


def test_initial_incremental_changed_deleted_and_bad_blobs(
        label_studio: LabelStudioServer, azurite: Azurite, client: LabelStudio) -> None:
    container = "sync-main"
    good = [f"batch/{i:04d}.jpg" for i in range(2000)] + [
        "with space/ünïcode 名前.PNG", "a/b/c/d/e/f/deep.jpeg"]
    fill(azurite, container, good)
    fill(azurite, container, ["notes.txt", "data.csv"], b"not an image")
    fill(azurite, container, ["empty.jpg"], b"")
    project = client.projects.create(title="sync main", label_config=CONFIG).id

    first = importer(label_studio, azurite, project, container)
    assert first.load_state() == 0
    report = first.run_pass()
    assert report.imported == len(good)
    assert report.skipped == {f"{container}/empty.jpg": "empty file (0 bytes)"}
    counts = keys_in(client, project)
    assert set(counts) == {f"{container}/{name}" for name in good}
    assert set(counts.values()) == {1}

    # A new process (a restart) reads the state back and imports only what is new.
    fill(azurite, container, ["batch/new-1.jpg", "batch/new-2.jpg"])
    again = importer(label_studio, azurite, project, container)
    assert again.load_state() == len(good)
    assert again.run_pass().imported == 2

    # An overwritten blob (new etag) updates its task; a deleted one is flagged, not deleted.
    fill(azurite, container, ["batch/0001.jpg"], media.png(40, 30))
    BlobServiceClient.from_connection_string(azurite.connection_string) \
        .get_container_client(container).delete_blob("batch/0002.jpg")
    report = again.run_pass()
    assert (report.updated, report.flagged_missing, report.imported) == (1, 1, 0)
    tasks = {t.data[KEY_FIELD]: t for t in client.tasks.list(project=project, page_size=2000)}
    assert tasks[f"{container}/batch/0002.jpg"].data[MISSING_FIELD] is True
    assert len(tasks) == len(good) + 2

    # The task's URL is a working, read-only SAS URL (for the labeler and the ML backend).
    url = tasks[f"{container}/with space/ünïcode 名前.PNG"].data["image"]
    fetcher = ImageFetcher(LabelStudioAuth(label_studio.url, ADMIN_TOKEN), ("127.0.0.1",),
                           max_bytes=10**6, max_pixels=10**7, timeout=10)
    assert fetcher.load(url, None).width == 32
    assert "sig=" in url and "sp=r" in url


def test_a_watching_sync_follows_changes_to_blobs_it_imported_itself(
        label_studio: LabelStudioServer, azurite: Azurite, client: LabelStudio) -> None:
    """Imports return no task ids: a blob imported by this process and then overwritten or
    deleted used to send the sync to /api/tasks/-1 (a crash) or be ignored."""
    container = "sync-watch-own"
    fill(azurite, container, ["a0.jpg", "a1.jpg", "a2.jpg"])
    project = client.projects.create(title="sync own changes", label_config=CONFIG).id
    watching = importer(label_studio, azurite, project, container)
    assert watching.run_pass().imported == 3
    fill(azurite, container, ["a0.jpg"], media.png(40, 30))
    BlobServiceClient.from_connection_string(azurite.connection_string) \
        .get_container_client(container).delete_blob("a2.jpg")
    report = watching.run_pass()
    assert (report.imported, report.updated, report.flagged_missing) == (0, 1, 1)
    tasks = {t.data[KEY_FIELD]: t for t in client.tasks.list(project=project, page_size=100)}
    assert len(tasks) == 3 and tasks[f"{container}/a2.jpg"].data[MISSING_FIELD] is True
    assert watching.run_pass().to_dict() | {"seconds": 0} == {
        "listed": 2, "imported": 0, "updated": 0, "flagged_missing": 0, "returned": 0,
        "resigned": 0, "skipped": {}, "seconds": 0}


def test_urls_are_resigned_before_they_expire(label_studio: LabelStudioServer,
                                              azurite: Azurite, client: LabelStudio) -> None:
    container = "sync-resign"
    fill(azurite, container, ["a.jpg", "b.jpg"])
    project = client.projects.create(title="sync resign", label_config=CONFIG).id
    first = importer(label_studio, azurite, project, container)
    first.run_pass()
    # A sync that wants at least 8 days left on URLs signed for 7 re-signs them all.
    later = importer(label_studio, azurite, project, container, resign_before_s=8 * 86400)
    later.load_state()
    assert later.run_pass().resigned == 2


@pytest.mark.parametrize("cache", [True, False], ids=["state-cache", "no-redis"])
def test_sigkill_mid_import_ends_with_exactly_one_task_per_blob(
        cache: bool, tmp_path: Path, label_studio: LabelStudioServer, azurite: Azurite,
        client: LabelStudio, redis_server: RedisServer, redis_db: Redis) -> None:
    container = f"sync-kill-{cache}".lower()
    names = [f"k/{i:04d}.png" for i in range(1200)]
    fill(azurite, container, names)
    project = client.projects.create(title="sync killed", label_config=CONFIG).id
    env = {**os.environ, "LABEL_STUDIO_URL": label_studio.url,
           "LABEL_STUDIO_API_KEY": ADMIN_TOKEN, "SYNC_CONTAINER": container,
           "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string, "SYNC_BATCH": "50",
           "LOG_LEVEL": "warning",
           "REDIS_URL": redis_server.url if cache else f"redis://127.0.0.1:{free_port()}/0"}
    api = LabelStudioAPI(LabelStudioAuth(label_studio.url, ADMIN_TOKEN))
    after_kills = [0]
    for delay in (0.0, 0.3, 0.6, 0.9):
        process = subprocess.Popen([mlassist_bin(), "sync", "--project", str(project)],
                                   env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        # Kill once this run has imported something (start-up time varies with the load).
        deadline = time.monotonic() + 60
        while api.project(project)["task_number"] <= after_kills[-1] \
                and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        after_kills.append(sum(keys_in(client, project).values()))
    assert any(0 < n < len(names) for n in after_kills[1:]), f"no kill landed mid-import: " \
                                                          f"{after_kills}"
    done = subprocess.run([mlassist_bin(), "sync", "--project", str(project)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    counts = keys_in(client, project)
    assert len(counts) == len(names)
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1][:5]
    # The last run read its imports back: the cache holds every blob and covers every task.
    assert redis_db.hlen(f"mlassist:sync:{project}:blobs") == (len(names) if cache else 0)
    if cache:
        last = max(t.id for t in client.tasks.list(project=project, page_size=2000))
        assert redis_db.hget(f"mlassist:sync:{project}:meta", "covered") == str(last).encode()


def test_watch_mode_stops_cleanly_on_sigterm(label_studio: LabelStudioServer, azurite: Azurite,
                                             client: LabelStudio,
                                             redis_server: RedisServer) -> None:
    container = "sync-watch"
    fill(azurite, container, ["w/1.jpg", "w/2.jpg"])
    project = client.projects.create(title="sync watch", label_config=CONFIG).id
    env = {**os.environ, "LABEL_STUDIO_URL": label_studio.url,
           "LABEL_STUDIO_API_KEY": ADMIN_TOKEN, "SYNC_CONTAINER": container,
           "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string, "SYNC_INTERVAL": "600",
           "LOG_LEVEL": "info", "REDIS_URL": redis_server.url}
    process = subprocess.Popen([mlassist_bin(), "sync", "--project", str(project), "--watch"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 60
    while sum(keys_in(client, project).values()) < 2:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.5)
    fill(azurite, container, ["w/3.jpg"])
    process.send_signal(signal.SIGHUP)  # on demand: a pass now, not in 10 minutes
    while sum(keys_in(client, project).values()) < 3:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err[-2000:]
    assert '"listed": 3' in out
    assert azurite.connection_string.split("AccountKey=")[1][:20] not in err


def test_account_url_with_key_or_sas(label_studio: LabelStudioServer, azurite: Azurite,
                                     client: LabelStudio) -> None:
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    from tests.azurite import ACCOUNT, KEY

    container = "sync-account-url"
    fill(azurite, container, ["x/1.jpg"])
    account_url = f"http://127.0.0.1:{azurite.port}/{ACCOUNT}"
    fetcher = ImageFetcher(LabelStudioAuth(label_studio.url, ADMIN_TOKEN), ("127.0.0.1",),
                           max_bytes=10**6, max_pixels=10**7, timeout=10)
    with_key = AzureBlobSource("", container, account_url=account_url, account_key=KEY)
    [blob] = list(with_key.list())
    assert fetcher.load(with_key.url_for(blob.name)[0], None).width == 32
    sas = generate_account_sas(ACCOUNT, KEY, ResourceTypes(container=True, object=True),
                               AccountSasPermissions(read=True, list=True),
                               datetime.now(UTC) + timedelta(hours=1))
    with_sas = AzureBlobSource("", container, account_url=account_url, sas_token=sas)
    assert [b.name for b in with_sas.list()] == ["x/1.jpg"]
    assert fetcher.load(with_sas.url_for("x/1.jpg")[0], None).width == 32
