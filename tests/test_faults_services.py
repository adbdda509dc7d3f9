"""Faults with real processes stopped for real: Label Studio SIGKILLed during a push-back and
during a watching sync, Azurite SIGKILLed in the middle of a listing, the backend SIGKILLed
while Label Studio's own "Retrieve predictions" waits on it. Each time the work fails with a
clear error instead of hanging, and once the service is back (same port, same data) the next
attempt finishes: nothing lost, nothing twice, counted from Label Studio itself. The outcomes
go to the reliability tally (tests/reliability.py)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.storage.blob import BlobServiceClient, ExponentialRetry
from label_studio_sdk import LabelStudio
from redis import Redis

from backend.core.errors import LabelStudioError
from backend.demo.localstack import Process, free_port
from backend.jobs import tasks as jobtasks
from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth
from backend.model.registry import open_registry
from sync.importer import KEY_FIELD, Importer
from sync.sources import AzureBlobSource
from tests import media, reliability
from tests.azurite import Azurite, azurite_binary
from tests.conftest import make_settings, require
from tests.httpserver import LoopbackServer
from tests.labels import CONFIG
from tests.labelstudio import ADMIN_TOKEN, LabelStudioServer, ls_binary, start_label_studio
from tests.redis_server import RedisServer
from tests.services import REPO, Backend, mlassist_bin, untrained_checkpoint

pytestmark = pytest.mark.e2e

LABELS = ["circle", "square", "triangle"]
ARCH = "ssdlite320_mobilenet_v3_large"
AUTH = ("mlassist", "faults-basic-pass")
PNG = media.png(32, 24)


@pytest.fixture(scope="module")
def ls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A Label Studio of this module's own: its tests kill it (the session's one stays up)."""
    require(ls_binary(), "Label Studio")
    server = start_label_studio(tmp_path_factory.mktemp("faults-label-studio"))
    yield server
    server.stop()


@pytest.fixture
def live_ls(ls: LabelStudioServer) -> LabelStudioServer:
    """The module's Label Studio, started again if an earlier test left it down."""
    return ls if ls.running() else ls.restart()


@pytest.fixture
def ls_client(live_ls: LabelStudioServer) -> LabelStudio:
    return LabelStudio(base_url=live_ls.url, api_key=ADMIN_TOKEN)


def api_for(server: LabelStudioServer) -> LabelStudioAPI:
    return LabelStudioAPI(LabelStudioAuth(server.url, ADMIN_TOKEN))


def wait_for(condition: Callable[[], Any], timeout: float, what: str,
             tick: float = 0.1) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what` at `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(tick)
    raise AssertionError(f"{what} did not happen within {timeout:g} s")


def new_project(client: LabelStudio, title: str) -> int:
    return int(client.projects.create(title=title, label_config=CONFIG).id or 0)


def task_count(client: LabelStudio, project: int) -> int:
    return int(client.projects.get(id=project).task_number or 0)


def blob_keys(client: LabelStudio, project: int) -> Counter:
    """How many tasks of the project carry each blob key."""
    tasks: Iterator[Any] = iter(client.tasks.list(project=project, page_size=1000))
    return Counter(task.data.get(KEY_FIELD) for task in tasks)


def versions_per_task(client: LabelStudio, project: int) -> dict[int, Counter]:
    """Per task id, how many predictions of each model version Label Studio holds."""
    found: dict[int, Counter] = {}
    for prediction in client.predictions.list(project=project):
        found.setdefault(int(prediction.task), Counter())[prediction.model_version] += 1
    return found


def duplicates_of(per_task: dict[int, Counter]) -> int:
    """Predictions beyond the first of one version on one task."""
    return sum(n - 1 for versions in per_task.values() for n in versions.values() if n > 1)


def fill(service: BlobServiceClient, container: str, names: list[str]) -> None:
    box = service.get_container_client(container)
    if not box.exists():
        box.create_container()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: box.upload_blob(name, PNG, overwrite=True), names))


# -- Label Studio down during a push-back --------------------------------------------------

@pytest.mark.timeout(240)
def test_label_studio_killed_during_push_back(tmp_path: Path, live_ls: LabelStudioServer,
                                              ls_client: LabelStudio, redis_db: Redis,
                                              redis_server: RedisServer,
                                              loopback: LoopbackServer) -> None:
    client, page = ls_client, 10
    project = new_project(client, "faults: push-back")
    images = [loopback.add(f"/p{i}.png", media.png(64, 48, i)) for i in range(8)]
    api = api_for(live_ls)
    api.import_tasks(project, [{"data": {"image": f"{images[n % 8]}?task={n}"}}
                               for n in range(43)])
    task_ids = [task["id"] for task in api.task_page(project, 0, 1000)]
    labeled = task_ids[12:15]  # labels in the middle of the walk: the push-back skips them
    for task_id in labeled:
        client.annotations.create(id=task_id, result=[])
    unlabeled = sorted(set(task_ids) - set(labeled))
    settings = make_settings(
        LABEL_STUDIO_URL=live_ls.url, LABEL_STUDIO_API_KEY=ADMIN_TOKEN,
        REDIS_URL=redis_server.url, MODEL_DIR=str(tmp_path / "models"),
        IMAGE_CACHE_DIR=str(tmp_path / "image-cache"), PUSHBACK_BATCH=str(page),
        SCORE_THRESHOLD="0.3", PRELABEL_UNCALIBRATED="show", INFERENCE_RUNTIME="torch",
        ALLOWED_IMAGE_HOSTS=f"127.0.0.1:{loopback.port}")
    registry = open_registry(settings)
    version = registry.reserve_version(project, ARCH)
    registry.add(project, {"version": version, "arch": ARCH,
                           "class_names": ["__background__", *LABELS],
                           "metrics": {"ap50": 0.5}},
                 untrained_checkpoint(tmp_path / "champion.pt", LABELS), promote=True, keep=3)
    context = jobtasks.Context(settings)

    killed_after: list[int] = []

    def kill_after_first_page(seen: int) -> bool:
        """Called once a page's predictions are imported: Label Studio dies right there,
        with the next page listed and being predicted."""
        if not killed_after:
            live_ls.kill()
            killed_after.append(seen)
        return False

    started = time.monotonic()
    with pytest.raises(LabelStudioError, match="unreachable.*is it running"):
        jobtasks.push_back(project, context, stop_after=kill_after_first_page)
    assert time.monotonic() - started < 60, "the push-back failed, but only after a long hang"
    assert killed_after == [page]
    assert context.queue.pushback_done(project) is None, "a failed pass is not marked done"
    assert not redis_db.exists(f"mlassist:lock:predict:{project}"), "the lock was released"

    live_ls.restart()
    assert set(versions_per_task(client, project)) == set(unlabeled[:page])
    retried = jobtasks.push_back(project, context)
    assert retried["status"] == "done" and retried["failed"] == 0
    assert retried["imported"] == len(unlabeled) - page, "the retry resumes after the page " \
                                                          "that was imported"
    per_task = versions_per_task(client, project)
    found = duplicates_of(per_task)
    reliability.duplicates(found)
    assert found == 0, {t: v for t, v in per_task.items() if max(v.values()) > 1}
    assert sorted(per_task) == unlabeled, "every unlabeled task, and only those, has one"
    assert all(versions == Counter({version: 1}) for versions in per_task.values())
    assert context.queue.pushback_done(project) == {"version": version, "tasks": 43}
    assert client.projects.get(id=project).model_version == version
    reliability.fault_survived("label studio down during push-back")


# -- Label Studio down during a watching sync ----------------------------------------------

@pytest.mark.timeout(240)
def test_label_studio_killed_during_a_watching_sync(tmp_path: Path, live_ls: LabelStudioServer,
                                                    ls_client: LabelStudio,
                                                    azurite: Azurite) -> None:
    client, container = ls_client, "faults-sync-ls-down"
    names = [f"s/{i:04d}.png" for i in range(600)]
    fill(BlobServiceClient.from_connection_string(azurite.connection_string), container,
         names)
    project = new_project(client, "faults: sync")
    log = tmp_path / "sync.log"
    env = {"LABEL_STUDIO_URL": live_ls.url, "LABEL_STUDIO_API_KEY": ADMIN_TOKEN,
           "SYNC_CONTAINER": container, "SYNC_BATCH": "20", "SYNC_INTERVAL": "600",
           "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string, "LOG_LEVEL": "info"}
    sync = Process([mlassist_bin(), "sync", "--project", str(project), "--watch"],
                   {**os.environ, **env}, log, cwd=REPO)
    try:
        wait_for(lambda: task_count(client, project) > 0, 60, "the first import")
        live_ls.kill()
        wait_for(lambda: not sync.running() or "sync pass failed" in log.read_text(), 30,
                 "a logged failure of the pass")
        time.sleep(1)
        assert sync.running(), f"the watching sync exited:\n{log.read_text()[-2000:]}"
        failure = [line for line in log.read_text().splitlines() if "sync pass failed" in line]
        assert "unreachable" in failure[0], failure

        live_ls.restart()
        before = task_count(client, project)
        assert 0 < before < len(names), f"the kill did not land mid-pass ({before} tasks)"
        sync.process.send_signal(signal.SIGHUP)  # the next pass now, not in 10 minutes
        report = wait_for(lambda: [line for line in log.read_text().splitlines()
                                   if "listed 600, imported" in line], 60, "the next pass")
        assert f"imported {len(names) - before}," in report[0], report
        counts = blob_keys(client, project)
        found = sum(n - 1 for n in counts.values())
        reliability.duplicates(found)
        assert found == 0, [key for key, n in counts.items() if n > 1][:5]
        assert set(counts) == {f"{container}/{name}" for name in names}, "none missing"
        sync.process.send_signal(signal.SIGTERM)
        assert sync.process.wait(30) == 0, log.read_text()[-2000:]
    finally:
        sync.stop()
    assert azurite.connection_string.split("AccountKey=")[1][:20] not in log.read_text()
    reliability.fault_survived("label studio down during sync")


# -- Azurite down in the middle of a listing -----------------------------------------------

class PagedContainer:
    """A real container client that lists `per_page` blobs per request (Azurite's own page is
    5,000) and calls `on_blob(n)` as the n-th listed blob is handed over."""

    def __init__(self, container: Any, per_page: int, on_blob: Callable[[int], None]) -> None:
        self._container = container
        self.per_page = per_page
        self.on_blob = on_blob

    def list_blobs(self, **kwargs: Any) -> Iterator[Any]:
        for n, blob in enumerate(self._container.list_blobs(results_per_page=self.per_page,
                                                            **kwargs), 1):
            self.on_blob(n)
            yield blob

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


@pytest.fixture
def own_azurite(tmp_path: Path) -> Iterator[Azurite]:
    """An Azurite of this test's own (it gets killed), its data in a folder that outlives it."""
    server = Azurite(require(azurite_binary(), "Azurite"), tmp_path / "azurite",
                     tmp_path / "azurite.log")
    yield server
    server.stop()


@pytest.mark.timeout(240)
def test_azurite_killed_mid_listing(tmp_path: Path, live_ls: LabelStudioServer,
                                    ls_client: LabelStudio, own_azurite: Azurite) -> None:
    client, container, per_page = ls_client, "faults-azurite-down", 250
    names = [f"a/{i:04d}.png" for i in range(1500)]
    fill(BlobServiceClient.from_connection_string(own_azurite.connection_string), container,
         names)
    own_azurite.stop()  # a clean stop saves Azurite's metadata: the kill tests the sync,
    own_azurite.restart()  # not whether the emulator itself loses the last 5 s of uploads
    project = new_project(client, "faults: azurite")
    source = AzureBlobSource(own_azurite.connection_string, container)
    # The SDK's own retry (15 s, 18 s, 24 s) would ride out a short outage; a shorter one
    # lets the outage outlast it without the test waiting a minute.
    quick = BlobServiceClient.from_connection_string(
        own_azurite.connection_string,
        retry_policy=ExponentialRetry(initial_backoff=1, increment_base=1, retry_total=2,
                                      random_jitter_range=0))
    killed_at: list[int] = []

    def kill_mid_listing(n: int) -> None:
        if n == per_page + per_page // 2 and not killed_at:  # in the second page
            own_azurite.kill()
            killed_at.append(n)

    source.container = PagedContainer(quick.get_container_client(container), per_page,
                                      kill_mid_listing)
    importer = Importer(api_for(live_ls), project, source)
    assert importer.load_state() == 0
    started = time.monotonic()
    with pytest.raises(ServiceRequestError):
        importer.run_pass()
    assert time.monotonic() - started < 60
    assert killed_at == [per_page + per_page // 2]
    assert task_count(client, project) == 0, "a pass whose listing failed imports nothing"

    own_azurite.restart()
    report = importer.run_pass()
    assert (report.listed, report.imported) == (len(names), len(names))
    counts = blob_keys(client, project)
    found = sum(n - 1 for n in counts.values())
    reliability.duplicates(found)
    assert found == 0
    assert set(counts) == {f"{container}/{name}" for name in names}, "none missing"
    assert importer.run_pass().imported == 0
    reliability.fault_survived("azurite down mid-listing")


# -- the backend down while Label Studio retrieves predictions -----------------------------

@pytest.mark.timeout(240)
def test_backend_killed_while_label_studio_retrieves_predictions(
        tmp_path: Path, live_ls: LabelStudioServer, ls_client: LabelStudio,
        loopback: LoopbackServer) -> None:
    client = ls_client
    env = {"LABEL_STUDIO_URL": live_ls.url, "LABEL_STUDIO_API_KEY": ADMIN_TOKEN,
           "MODEL_WEIGHTS": str(untrained_checkpoint(tmp_path / "model.pt", LABELS)),
           "ALLOWED_IMAGE_HOSTS": f"127.0.0.1:{loopback.port}", "SCORE_THRESHOLD": "0.3",
           "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1], "PORT": str(free_port()),
           "INFERENCE_RUNTIME": "torch", "TORCH_THREADS": "1"}
    backend = Backend(env, tmp_path / "backend-1.log")
    try:
        backend.wait().wait_model()
        project = new_project(client, "faults: retrieve")
        paths = [f"/r{n}.png" for n in range(30)]
        for n, path in enumerate(paths):  # slow images: the kill lands inside /predict
            loopback.add(path, media.png(64, 48, n), delay=0.5)
        api_for(live_ls).import_tasks(project, [{"data": {"image": loopback.base + path}}
                                                for path in paths])
        tasks = [task["id"] for task in api_for(live_ls).task_page(project, 0, 100)]
        client.ml.create(project=project, url=backend.url, title="MLAssist",
                         auth_method="BASIC_AUTH", basic_auth_user=AUTH[0],
                         basic_auth_pass=AUTH[1], is_interactive=False)

        def retrieve(selected: dict) -> None:
            client.actions.create(id="retrieve_tasks_predictions", project=project,
                                  selected_items=selected,
                                  request_options={"timeout_in_seconds": 200})

        retrieve({"all": False, "included": tasks[:5]})  # some tasks hold it beforehand
        before = versions_per_task(client, project)
        assert sorted(before) == tasks[:5]
        [version] = {v for versions in before.values() for v in versions}

        outcome: list[str] = []
        action = threading.Thread(target=lambda: outcome.append(
            _outcome(retrieve, {"all": True, "excluded": []})), daemon=True)
        action.start()
        wait_for(lambda: any(loopback.seen.get(path) for path in paths[5:]), 60,
                 "the backend fetching the rest of the images")
        backend.kill()
        action.join(120)
        assert not action.is_alive(), "Label Studio's action hung on a dead backend"
        after_kill = versions_per_task(client, project)
        assert after_kill == before, "a batch cut off by the kill stores nothing"

        for path in paths:
            loopback.routes[path].delay = 0.0
        backend = Backend(env, tmp_path / "backend-2.log")  # on the same port
        backend.wait().wait_model()
        retrieve({"all": True, "excluded": []})
        per_task = versions_per_task(client, project)
        found = duplicates_of(per_task)
        reliability.duplicates(found)
        assert found == 0, {t: v for t, v in per_task.items() if max(v.values()) > 1}
        assert sorted(per_task) == tasks, f"action outcome while killed: {outcome}"
        assert all(versions == Counter({version: 1}) for versions in per_task.values())
    finally:
        backend.stop()
    reliability.fault_survived("backend restarted while label studio retrieves predictions")


def _outcome(call: Callable[[dict], None], selected: dict) -> str:
    try:
        call(selected)
    except Exception as exc:  # noqa: BLE001 - Label Studio's answer is reported, not judged
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return "returned"
