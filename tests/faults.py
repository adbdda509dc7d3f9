"""What the fault tests share (tests/test_faults_*.py): projects of generated scenes in a real
Label Studio, the backend's environment, a Redis that survives SIGKILL on its append-only
file, and killing a process tree for real."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import time
from pathlib import Path

import pytest
from label_studio_sdk import LabelStudio
from redis import Redis
from redis.exceptions import RedisError

from backend.demo.localstack import Process, descendants, free_port, wait_port
from backend.demo.scenes import make_scene
from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth
from tests.labels import CONFIG, regions_of
from tests.labelstudio import ADMIN_TOKEN, LabelStudioServer

SECRET = "faults-webhook-secret"
ARCH = "ssdlite320_mobilenet_v3_large"
CLASS_NAMES = ["__background__", "circle", "square", "triangle"]




def jpeg_uri(seed: int) -> str:
    buffer = io.BytesIO()
    make_scene(seed).image.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def ls_api(label_studio: LabelStudioServer) -> LabelStudioAPI:
    return LabelStudioAPI(LabelStudioAuth(label_studio.url, ADMIN_TOKEN))


def new_project(client: LabelStudio, api: LabelStudioAPI, title: str, seeds: range,
                 labeled: int = 0) -> list[dict]:
    """A project whose tasks are scenes (inline images); the first `labeled` get ground truth
    through the API, one annotation each, as a labeler would. Returns the tasks by id."""
    project = client.projects.create(title=title, label_config=CONFIG).id
    api.import_tasks(project, [{"data": {"image": jpeg_uri(seed), "seed": seed}}
                               for seed in seeds])
    tasks = sorted(api.task_page(project, 0, len(seeds) + 10), key=lambda t: t["id"])
    assert len(tasks) == len(seeds)
    for task in tasks[:labeled]:
        client.annotations.create(id=task["id"],
                                  result=regions_of(make_scene(int(task["data"]["seed"]))))
    for task in tasks:
        task["project"] = project
    return tasks


def base_env(tmp_path: Path, label_studio: LabelStudioServer, redis_url: str) -> dict[str, str]:
    return {
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": ADMIN_TOKEN,
        "REDIS_URL": redis_url, "MODEL_DIR": str(tmp_path / "models"),
        "IMAGE_CACHE_DIR": str(tmp_path / "images"), "TORCH_HOME": str(tmp_path / "torch"),
        "MODEL_WEIGHTS": "none", "DEVICE": "cpu", "LOG_LEVEL": "info",
        "TRAIN_EVERY": "1000", "TRAIN_GROWTH": "0", "TRAIN_STEPS": "5",
        "TRAIN_BATCH_SIZE": "2", "VALIDATION_FRACTION": "0.3", "MIN_VALIDATION_IMAGES": "2",
        "MIN_FIRST_AP50": "0", "SCORE_THRESHOLD": "0.05", "PRELABEL_UNCALIBRATED": "show",
    }


def tail(*logs: Path) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                     for log in logs if log.exists())


def dead(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet (it runs nothing any more)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


def sigkill_tree(process: Process) -> set[int]:
    """SIGKILL a process, its group and every descendant (an RQ work horse runs in a session
    of its own); return the descendants that were killed with it."""
    family = descendants(process.process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.process.pid, signal.SIGKILL)
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.process.wait(30)
    deadline = time.monotonic() + 30
    while not all(dead(pid) for pid in family):
        assert time.monotonic() < deadline, f"survivors of SIGKILL: {family}"
        time.sleep(0.05)
    process.stop()  # closes its log
    return family


def wait_for(what: str, check, timeout: float, *logs: Path, every: float = 0.2):
    """Poll `check` until it returns something truthy, or fail saying `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s\n{tail(*logs)}")
        time.sleep(every)


class DurableRedis:
    """redis-server with an append-only file on its own port and directory, so it can be
    SIGKILLed and started again on the same data (docker/compose.yaml runs `--appendonly yes`;
    writes reach the kernel before a client sees the reply, so a killed process loses none)."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        workdir.mkdir(parents=True, exist_ok=True)
        self.starts = 0
        self._process = self._start()

    def _start(self) -> Process:
        self.starts += 1
        process = Process([self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                           "--appendonly", "yes", "--save", "", "--dir", str(self.workdir)],
                          os.environ, self.workdir / f"redis-{self.starts}.log")
        wait_port(self.port, 20, process)
        client = Redis.from_url(self.url, socket_timeout=2)
        deadline = time.monotonic() + 20
        while True:  # a restart answers LOADING until the append-only file is read back
            try:
                client.ping()
                return process
            except RedisError:
                assert time.monotonic() < deadline, "Redis did not load its data"
                time.sleep(0.05)

    def kill(self) -> None:
        from tests.labelstudio import kill_now

        kill_now(self._process, self.port)

    def restart(self) -> None:
        self._process.stop()
        self._process = self._start()

    def stop(self) -> None:
        self._process.stop()


