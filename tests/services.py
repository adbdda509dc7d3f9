"""Start real processes for tests: the backend under gunicorn, with a test checkpoint."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import requests

from backend.demo.localstack import Process, free_port, wait_http
from backend.model.architectures import build_untrained_model
from backend.model.checkpoint import BACKGROUND, save_checkpoint
from tests.labelstudio import kill_now

REPO = Path(__file__).resolve().parents[1]


def untrained_checkpoint(path: Path, labels: list[str],
                         arch: str = "ssdlite320_mobilenet_v3_large") -> Path:
    """A checkpoint of a seeded, untrained model whose classes are `labels`."""
    names = [BACKGROUND, *labels]
    model = build_untrained_model(arch, num_classes=len(names))
    return save_checkpoint(path, arch=arch, class_names=names, state_dict=model.state_dict(),
                           model_version="untrained-test")


def mlassist_bin() -> str:
    found = shutil.which("mlassist", path=str(Path(sys.executable).parent))
    return found or "mlassist"


class Backend:
    """`mlassist serve` in a subprocess, logging to a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = int(env.get("PORT") or free_port())
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        full_env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port),
                    "DEVICE": "cpu", **env}
        self._process = Process([mlassist_bin(), "serve"], full_env, log, cwd=REPO)

    def wait(self, timeout: float = 60.0) -> Backend:
        wait_http(f"{self.url}/health", timeout, self._process)
        return self

    def wait_model(self, timeout: float = 90.0) -> Backend:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if requests.get(f"{self.url}/health", timeout=2).json().get("model_loaded"):
                return self
            time.sleep(0.3)
        raise TimeoutError(f"model not loaded within {timeout:g} s:\n{self.log.read_text()}")

    @property
    def pid(self) -> int:
        return self._process.process.pid

    def stop(self) -> None:
        self._process.stop()

    def kill(self) -> None:
        """SIGKILL gunicorn and its workers at once (a crash) and wait until the port closes."""
        kill_now(self._process, self.port)
