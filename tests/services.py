"""Start real processes for tests: the backend under gunicorn, Label Studio."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from backend.model.architectures import build_untrained_model
from backend.model.checkpoint import BACKGROUND, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float, process: subprocess.Popen | None = None,
              log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with {process.returncode} before {url} "
                               f"answered:\n{tail}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:g} s")


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
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        full_env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port),
                    "DEVICE": "cpu", **env}
        self._handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([mlassist_bin(), "serve"], env=full_env, cwd=REPO,
                                        stdout=self._handle, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 60.0) -> Backend:
        wait_http(f"{self.url}/health", timeout, self.process, self.log)
        return self

    def wait_model(self, timeout: float = 90.0) -> Backend:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if requests.get(f"{self.url}/health", timeout=2).json().get("model_loaded"):
                return self
            time.sleep(0.3)
        raise TimeoutError(f"model not loaded within {timeout:g} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._handle.close()
