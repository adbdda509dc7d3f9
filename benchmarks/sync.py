"""Sync benchmark: a fake container listing of 118,000 names imported into a real Label Studio,
then 5,000 real JPEGs in a real Azurite against Label Studio's own storage sync of the same files.

First section: the listing is generated (Azurite manages ~2,000 listed blobs/s); everything after
it is real: the plan, a real SAS signature per task, bulk imports into Label Studio 1.23.2 with
the state cache in a real Redis (the first pass ends by reading its new tasks back into it), and
the restart path three ways: reading every task back (no cache), rebuilding a missing cache, and
a start from the cache (which reads only tasks above it and checks Label Studio's task count);
then a pass with nothing to do.

Second section (`azurite`, skip with --no-azurite): real blobs in a real Azurite, synced the way
`mlassist sync` does it (settings -> build_importer -> load_state -> run_pass): first pass, a
pass with nothing new, 50 new blobs; task counts read from Label Studio. The baseline is Label
Studio's own import storage on the same files: its Azure storage cannot point at Azurite
(LABEL_STUDIO_FACTS.md), so its local-files storage syncs a copy of them from disk.

    python benchmarks/sync.py [--blobs 118000] [--batch 5000] [--azurite-blobs 5000]
                              [--no-azurite] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.core.settings import Settings  # noqa: E402
from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth  # noqa: E402
from benchmarks.report import emit, stop_cleanly_on_sigterm  # noqa: E402
from sync.importer import Importer  # noqa: E402
from sync.plan import BlobInfo, plan  # noqa: E402
from sync.service import build_importer  # noqa: E402
from sync.sources import AzureBlobSource  # noqa: E402
from sync.state import StateCache  # noqa: E402
from tests import media  # noqa: E402
from tests.azurite import ACCOUNT, KEY, Azurite, azurite_binary  # noqa: E402
from tests.labels import CONFIG  # noqa: E402
from tests.labelstudio import ADMIN_TOKEN, LabelStudioServer, start_label_studio  # noqa: E402
from tests.redis_server import RedisServer, redis_binary  # noqa: E402

CONTAINER = "bench"
FOLDER = "bench-images"  # under Label Studio's local-files document root
NEW_BLOBS = 50
DONE = ("completed", "completed_with_errors", "failed")


class FakeListing(AzureBlobSource):
    """A real source object (real SAS signing) whose listing is generated, not fetched."""

    def __init__(self, count: int) -> None:
        connection = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                      f"BlobEndpoint=http://127.0.0.1:9/{ACCOUNT};")
        super().__init__(connection, "train2017", sas_ttl=timedelta(days=7))
        self.count = count

    def list(self):
        for i in range(self.count):
            yield BlobInfo("train2017", f"{i % 100:02d}/{i:012d}.jpg", f"0x8D{i:012X}", 160_000)


class TimedSource:
    """Wraps the importer's source to split a pass into listing, signing and the rest."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.list_seconds = 0.0
        self.sign_seconds = 0.0

    def list(self) -> list[BlobInfo]:
        started = time.perf_counter()
        listed = list(self.source.list())
        self.list_seconds += time.perf_counter() - started
        return listed

    def url_for(self, name: str) -> tuple[str, float]:
        started = time.perf_counter()
        try:
            return self.source.url_for(name)
        finally:
            self.sign_seconds += time.perf_counter() - started

    def split(self) -> dict[str, float]:
        found = {"list_seconds": round(self.list_seconds, 2),
                 "sign_seconds": round(self.sign_seconds, 2)}
        self.list_seconds = self.sign_seconds = 0.0
        return found


def jpegs(first: int, count: int) -> dict[str, bytes]:
    """Small real JPEGs (64x48 noise, about 5 KB), one distinct image per name."""
    return {f"img-{i:05d}.jpg": media.jpeg(64, 48, seed=i) for i in range(first, first + count)}


def upload(container: Any, files: dict[str, bytes]) -> dict[str, float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: container.upload_blob(*item, overwrite=True), files.items()))
    seconds = time.perf_counter() - started
    return {"blobs": len(files), "seconds": round(seconds, 2),
            "blobs_per_s": round(len(files) / seconds)}


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def start_label_studio_serving(workdir: Path, files_root: Path) -> LabelStudioServer:
    """start_label_studio with local-files serving on under `files_root` (label_studio_env
    lets the caller's environment override its own values, so no change to tests/ is needed)."""
    with mock.patch.dict(os.environ, {
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root)}):
        return start_label_studio(workdir)


class LabelStudioCalls:
    """The few raw Label Studio calls the comparison needs that our adapter does not have."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers["Authorization"] = f"Token {ADMIN_TOKEN}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.session.request(method, self.url + path, timeout=1800, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def create_project(self, title: str) -> int:
        found = self.call("POST", "/api/projects", json={"title": title, "label_config": CONFIG})
        return int(found["id"])

    def task_count(self, project: int) -> dict[str, int]:
        """Both of Label Studio's own counts: the project's and the task list's total."""
        listed = self.call("GET", "/api/tasks", params={"project": project, "page_size": 1})
        record = self.call("GET", f"/api/projects/{project}")
        return {"tasks_total": int(listed["total"]), "task_number": int(record["task_number"])}

    def first_image(self, project: int) -> str:
        listed = self.call("GET", "/api/tasks", params={"project": project, "page_size": 1,
                                                         "resolve_uri": "false"})
        return str(listed["tasks"][0]["data"]["image"])

    def fetch_is_jpeg(self, url: str) -> bool:
        """The image behind a task's URL: SAS URLs go out bare, LS paths with the token."""
        if url.startswith("/"):
            response = self.session.get(self.url + url, timeout=30)
        else:
            response = requests.get(url, timeout=30)
        return response.status_code == 200 and response.content[:3] == b"\xff\xd8\xff"

    def storage_sync(self, storage: int) -> dict[str, Any]:
        """POST .../sync, then poll the storage until its status is final; both timed."""
        started = time.perf_counter()
        self.call("POST", f"/api/storages/localfiles/{storage}/sync")
        request_seconds = time.perf_counter() - started
        state = self.call("GET", f"/api/storages/localfiles/{storage}")
        status_after_request = state["status"]
        while state["status"] not in DONE:
            time.sleep(0.2)
            state = self.call("GET", f"/api/storages/localfiles/{storage}")
        seconds = time.perf_counter() - started
        meta = state.get("meta") or {}
        return {"created": state.get("last_sync_count"),
                "existed": meta.get("tasks_existed"), "status": state["status"],
                "status_when_request_returned": status_after_request,
                "request_seconds": round(request_seconds, 2), "seconds": round(seconds, 2)}


def ours(ls: LabelStudioServer, calls: LabelStudioCalls, azurite: Azurite,
         container: Any, blobs: int) -> dict[str, Any]:
    """Our sync of the container, as `mlassist sync` builds and runs it."""
    project = calls.create_project("sync benchmark: ours")
    settings = Settings.from_env({
        "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ADMIN_TOKEN,
        "SYNC_CONTAINER": CONTAINER,
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})
    importer = build_importer(settings, project)
    timed = TimedSource(importer.source)
    importer.source = timed
    found: dict[str, Any] = {"project": project, "batch": settings.sync_batch,
                             "known_at_start": importer.load_state()}
    started = time.perf_counter()
    first = importer.run_pass()
    seconds = time.perf_counter() - started
    split = timed.split()
    found["first_pass"] = {**first.to_dict(), "skipped": len(first.skipped),
                           "seconds": round(seconds, 2), **split,
                           "tasks_per_s": round(first.imported / seconds),
                           # without the listing: Label Studio's baseline lists a local disk
                           "tasks_per_s_after_listing": round(
                               first.imported / (seconds - split["list_seconds"]))}
    started = time.perf_counter()
    again = importer.run_pass()
    found["second_pass"] = {"listed": again.listed, "imported": again.imported,
                            "updated": again.updated, "resigned": again.resigned,
                            "seconds": round(time.perf_counter() - started, 2), **timed.split()}
    found["upload_new"] = upload(container, jpegs(blobs, NEW_BLOBS))
    started = time.perf_counter()
    new = importer.run_pass()
    found["incremental_pass"] = {"listed": new.listed, "imported": new.imported,
                                 "updated": new.updated,
                                 "seconds": round(time.perf_counter() - started, 2),
                                 **timed.split()}
    found["label_studio_counts"] = calls.task_count(project)
    restarted = build_importer(settings, project)
    started = time.perf_counter()
    found["restart_read_back"] = {"distinct_blob_keys": restarted.load_state(),
                                  "seconds": round(time.perf_counter() - started, 2)}
    found["sample_image_fetch_ok"] = calls.fetch_is_jpeg(calls.first_image(project))
    return found


def theirs(ls: LabelStudioServer, calls: LabelStudioCalls, folder: Path,
           blobs: int) -> dict[str, Any]:
    """Label Studio's own local-files import storage on a copy of the same images."""
    project = calls.create_project("sync benchmark: Label Studio local files")
    storage = calls.call("POST", "/api/storages/localfiles", json={
        "project": project, "title": "bench images", "path": str(folder),
        "regex_filter": r".*\.jpg", "use_blob_urls": True})["id"]
    found: dict[str, Any] = {"project": project, "storage": storage}
    first = calls.storage_sync(storage)
    found["first_sync"] = {**first, "tasks_per_s": round((first["created"] or 0)
                                                         / first["seconds"])}
    found["second_sync"] = calls.storage_sync(storage)
    write_files(folder, jpegs(blobs, NEW_BLOBS))
    found["incremental_sync"] = calls.storage_sync(storage)
    found["label_studio_counts"] = calls.task_count(project)
    found["sample_image_fetch_ok"] = calls.fetch_is_jpeg(calls.first_image(project))
    return found


def azurite_section(blobs: int) -> dict[str, Any]:
    """Real blobs in Azurite: our sync vs Label Studio's local-files storage sync."""
    from azure.storage.blob import BlobServiceClient

    binary = azurite_binary()
    if binary is None:
        raise FileNotFoundError("Azurite is not installed: run scripts/bootstrap.sh or set "
                                "MLASSIST_AZURITE (or pass --no-azurite)")
    found: dict[str, Any] = {"blobs": blobs, "new_blobs": NEW_BLOBS,
                             "image": "64x48 JPEG", "load_average_at_start": os.getloadavg()}
    files = jpegs(0, blobs)
    found["image_bytes_mean"] = round(sum(map(len, files.values())) / len(files))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        azurite = Azurite(binary, work / "azurite", work / "azurite.log")
        ls = None
        try:
            container = BlobServiceClient.from_connection_string(
                azurite.connection_string).get_container_client(CONTAINER)
            container.create_container()
            found["upload"] = upload(container, files)  # setup, not counted
            files_root = work / "files"
            write_files(files_root / FOLDER, files)
            ls = start_label_studio_serving(work, files_root)
            calls = LabelStudioCalls(ls.url)
            found["ours"] = ours(ls, calls, azurite, container, blobs)
            found["label_studio_local_files"] = theirs(ls, calls, files_root / FOLDER, blobs)
        finally:
            if ls is not None:
                ls.stop()
            azurite.stop()
    mine, base = found["ours"], found["label_studio_local_files"]
    found["ratio_first_pass_tasks_per_s_ours_over_theirs"] = round(
        mine["first_pass"]["tasks_per_s"] / max(base["first_sync"]["tasks_per_s"], 1), 1)
    found["ratio_first_pass_after_listing_ours_over_theirs"] = round(
        mine["first_pass"]["tasks_per_s_after_listing"]
        / max(base["first_sync"]["tasks_per_s"], 1), 1)
    found["ratio_second_pass_seconds_ours_over_theirs"] = round(
        mine["second_pass"]["seconds"] / max(base["second_sync"]["seconds"], 0.01), 1)
    total = blobs + NEW_BLOBS
    found["checks"] = {
        "ours_first_pass_imported_all": mine["first_pass"]["imported"] == blobs,
        "ours_second_pass_imported_none": mine["second_pass"]["imported"] == 0,
        "ours_incremental_imported_exactly_new": mine["incremental_pass"]["imported"]
        == NEW_BLOBS,
        "ours_tasks_in_label_studio": set(mine["label_studio_counts"].values()) == {total},
        "ours_one_task_per_blob": mine["restart_read_back"]["distinct_blob_keys"] == total,
        "theirs_tasks_in_label_studio": set(base["label_studio_counts"].values()) == {total},
        "theirs_incremental_created_exactly_new": base["incremental_sync"]["created"]
        == NEW_BLOBS,
        "images_fetchable": mine["sample_image_fetch_ok"] and base["sample_image_fetch_ok"],
    }
    found["load_average_at_end"] = os.getloadavg()
    return found


def timed(run: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    found = run()
    return found, round(time.perf_counter() - started, 2)


def restarts(api: LabelStudioAPI, project: int, source: Any, batch: int,
             redis_url: str) -> dict[str, Any]:
    """The first pass, then a restart three ways, then a pass with nothing to do."""
    def importer(cached: bool) -> Importer:
        state = StateCache.from_url(redis_url, project) if cached else None
        return Importer(api, project, source, batch=batch, state=state)

    found: dict[str, Any] = {}
    first = importer(True)
    result, seconds = timed(first.run_pass)
    found["first_pass"] = {**result.to_dict(), "skipped": len(result.skipped),
                           "seconds": seconds, "tasks_per_s": round(result.imported / seconds)}
    cold = importer(False)
    known, seconds = timed(cold.load_state)
    found["restart_read_back"] = {"tasks": known, "seconds": seconds}
    StateCache.from_url(redis_url, project).redis.flushall()
    rebuilt = importer(True)
    known, seconds = timed(rebuilt.load_state)
    found["restart_cache_missing_rebuild"] = {"tasks": known, "seconds": seconds}
    restarted = importer(True)
    known, seconds = timed(restarted.load_state)
    found["restart_cached"] = {"tasks": known, "seconds": seconds}
    again, seconds = timed(restarted.run_pass)
    found["second_pass"] = {"imported": again.imported, "updated": again.updated,
                            "resigned": again.resigned, "seconds": seconds}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=118_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--azurite-blobs", type=int, default=5000)
    parser.add_argument("--no-azurite", action="store_true",
                        help="skip the real-Azurite section and its Label Studio baseline")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    stop_cleanly_on_sigterm()
    report: dict = {"machine": {"python": platform.python_version(), "cpu": platform.machine(),
                                "cores": os.cpu_count()}, "blobs": args.blobs,
                    "batch": args.batch}
    source = FakeListing(args.blobs)
    started = time.perf_counter()
    listed = list(source.list())
    todo = plan(listed, {})
    report["plan_seconds"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    for blob in listed[:5000]:
        source.url_for(blob.name)
    report["sas_signatures_per_s"] = round(5000 / (time.perf_counter() - started))
    assert len(todo.new) == args.blobs
    binary = redis_binary()
    if binary is None:
        raise FileNotFoundError("redis-server is not installed: run scripts/bootstrap.sh")
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(binary, Path(tmp) / "redis")
        ls = start_label_studio(Path(tmp))
        try:
            api = LabelStudioAPI(LabelStudioAuth(ls.url, ADMIN_TOKEN), timeout=600)
            from label_studio_sdk import LabelStudio

            project = LabelStudio(base_url=ls.url, api_key=ADMIN_TOKEN).projects.create(
                title="sync benchmark", label_config=CONFIG).id
            report.update(restarts(api, project, source, args.batch, redis.url))
        finally:
            ls.stop()
            redis.stop()
    report["target_seconds"] = 300
    report["total_seconds"] = round(report["plan_seconds"] + report["first_pass"]["seconds"], 1)
    if not args.no_azurite:
        report["azurite"] = azurite_section(args.azurite_blobs)
    emit(report, args.out)
    if not all(report.get("azurite", {}).get("checks", {}).values()):
        sys.exit("an azurite check failed: see azurite.checks above")


if __name__ == "__main__":
    main()
