"""The README's first command, for real: `./scripts/up.sh` on an empty home brings up Redis,
Label Studio, the backend, a worker and the sync of the demo folder; `./scripts/up.sh label`
submits the demo's ground truth; the rest of the demo images get pre-annotations; Ctrl-C
stops everything; a second run reuses what exists. Default training settings throughout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from label_studio_sdk import LabelStudio

from backend.demo.localstack import Process, descendants, free_port
from backend.model.registry import LocalStore, Registry
from tests.conftest import require
from tests.labelstudio import ls_binary

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
IMAGES = 40


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for_line(process: Process, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = process.log.read_text(errors="replace")
        if text in log:
            return log
        assert process.running(), log[-4000:]
        time.sleep(0.5)
    raise AssertionError(f"no {text!r} within {timeout:g} s:\n{process.log.read_text()[-4000:]}")


def interrupt(process: Process, ports: list[int]) -> None:
    """Ctrl-C: SIGINT to up.sh (its children run in sessions of their own)."""
    family = descendants(process.process.pid)
    assert family, "up.sh started its services as its children"
    os.kill(process.process.pid, signal.SIGINT)
    assert process.process.wait(90) == 0
    time.sleep(1)
    alive = [pid for pid in family if Path(f"/proc/{pid}").exists()
             and "zombie" not in Path(f"/proc/{pid}/status").read_text()]
    assert alive == [], "Ctrl-C left processes running"
    assert not any(listening(port) for port in ports)


def test_up_labels_prelabels_stops_and_restarts(tmp_path: Path) -> None:
    require(ls_binary(), "Label Studio")
    home = tmp_path / "home"
    ports = {"LS_PORT": free_port(), "BACKEND_PORT": free_port(), "REDIS_PORT": free_port()}
    env = {**os.environ, "MLASSIST_HOME": str(home), "DEMO_IMAGES": str(IMAGES),
           "MODEL_WEIGHTS": "none", "TORCH_HOME": str(tmp_path / "torch"),
           **{k: str(v) for k, v in ports.items()}}
    up = Process(["bash", str(REPO / "scripts" / "up.sh")], env, tmp_path / "up-1.log")
    try:
        log = wait_for_line(up, "Ctrl-C stops everything", 400)
        assert "(first start migrates its database)" in log
        assert f"syncing the demo folder {home / 'demo-images'} ({IMAGES} generated" in log
        password = log.split("log in as admin@example.com / ")[1].split()[0]
        secrets = (home / "secrets.json").read_text()
        assert password in secrets and oct((home / "secrets.json").stat().st_mode)[-3:] == "600"

        labeled = subprocess.run(["bash", str(REPO / "scripts" / "up.sh"), "label"], env=env,
                                 capture_output=True, text=True, timeout=300)
        assert labeled.returncode == 0, labeled.stdout + labeled.stderr
        assert "labeled 30/30" in labeled.stdout

        import json

        client = LabelStudio(base_url=f"http://127.0.0.1:{ports['LS_PORT']}",
                             api_key=json.loads(secrets)["token"])
        project = next(p.id for p in client.projects.list() if p.title == "MLAssist demo")
        tasks = list(client.tasks.list(project=project))
        assert len(tasks) == IMAGES
        assert all(t.data["image"].startswith("/data/local-files/?d=demo-images/scene-")
                   for t in tasks)
        unlabeled = {t.id for t in tasks if not t.total_annotations}
        assert len(unlabeled) == IMAGES - 30

        registry = Registry(LocalStore(home / "models" / "registry"), tmp_path / "cache")
        deadline = time.monotonic() + 600
        while True:
            champion = registry.champion(project)
            if champion is not None:
                found = {p.task for p in client.predictions.list(project=project)
                         if p.model_version == champion["version"] and p.result}
                if unlabeled <= found:
                    break
            assert time.monotonic() < deadline, \
                (home / "logs" / "worker.log").read_text()[-4000:]
            time.sleep(3)
        interrupt(up, list(ports.values()))

        # Again: the same home, nothing re-created, nothing imported twice.
        up = Process(["bash", str(REPO / "scripts" / "up.sh")], env, tmp_path / "up-2.log")
        log = wait_for_line(up, "Ctrl-C stops everything", 300)
        assert "first start" not in log and "created project" not in log
        assert [p.title for p in client.projects.list()] == ["MLAssist demo"]
        assert len(list(client.tasks.list(project=project))) == IMAGES
        assert registry.champion(project)["version"] == champion["version"]
        interrupt(up, list(ports.values()))
    finally:
        up.stop()


def _demo_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo", REPO / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_azure_variables_switch_the_demo_from_its_folder_to_the_container(
        tmp_path: Path) -> None:
    from backend.core.settings import Settings
    from tests.azurite import ACCOUNT, KEY

    demo = _demo_module()
    local = demo.Demo({"MLASSIST_HOME": str(tmp_path)}).backend_env()
    assert local["SYNC_LOCAL_DIR"] == str(tmp_path / "demo-images")
    assert local["SYNC_LOCAL_URL_PREFIX"] == "/data/local-files/?d=demo-images/"
    connection = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                  f"BlobEndpoint=http://10.1.2.3:10000/{ACCOUNT};")
    azure = demo.Demo({"MLASSIST_HOME": str(tmp_path), "SYNC_CONTAINER": "images",
                       "AZURE_STORAGE_CONNECTION_STRING": connection})
    assert azure.azure()
    env = azure.backend_env()
    assert "SYNC_LOCAL_DIR" not in env and env["SYNC_CONTAINER"] == "images"
    assert demo.blob_host(Settings.from_env(env)) == "10.1.2.3", \
        "the backend is allowed to fetch from the container's host"
    assert not demo.Demo({"MLASSIST_HOME": str(tmp_path), "SYNC_CONTAINER": "x"}).azure(), \
        "a container without credentials is not a switch"
