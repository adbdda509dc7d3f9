"""A real Label Studio server for the test session, started from a migrated template.

The first start of a data dir runs migrations (25-90 s); a copy of an already-migrated dir
starts in seconds. The template lives in $MLASSIST_CACHE (outside the checkout) and is rebuilt
when missing. Label Studio itself comes from $MLASSIST_LS_VENV (scripts/bootstrap.sh).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import time
from pathlib import Path

from backend.demo.localstack import Process, free_port, label_studio_env, wait_http

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "mlassist-admin-pass"  # noqa: S105 - throwaway test server
ADMIN_TOKEN = "mlassist-test-legacy-token"  # noqa: S105
LS_VERSION = "1.23.2"


def ls_binary() -> Path | None:
    venv = os.environ.get("MLASSIST_LS_VENV")
    if not venv:
        cache = Path(os.environ.get("MLASSIST_CACHE", Path.home() / ".cache" / "mlassist"))
        venv = str(cache / f"label-studio-{LS_VERSION}")
    binary = Path(venv) / "bin" / "label-studio"
    return binary if binary.exists() else None


class LabelStudioServer:
    """`label-studio start` on a loopback port (a free one by default) with its own data dir."""

    def __init__(self, binary: Path, data_dir: Path, log: Path, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log = log
        self._process = self._start()

    def _start(self) -> Process:
        env = label_studio_env(self.data_dir, ADMIN_EMAIL, ADMIN_PASSWORD, ADMIN_TOKEN)
        return Process(
            [str(self.binary), "start", "--no-browser", "--internal-host", "127.0.0.1",
             "--port", str(self.port)], env, self.log)

    def wait(self, timeout: float) -> LabelStudioServer:
        wait_http(f"{self.url}/health", timeout, self._process)
        return self

    def running(self) -> bool:
        return self._process.running()

    def stop(self) -> None:
        self._process.stop()

    def kill(self) -> None:
        """SIGKILL the server (a crash, not a shutdown) and wait until its port is closed."""
        kill_now(self._process, self.port)

    def restart(self, timeout: float = 120.0) -> LabelStudioServer:
        """Start again on the same port and data dir (after stop() or kill())."""
        self._process.stop()
        self._process = self._start()
        return self.wait(timeout)


def kill_now(process: Process, port: int, timeout: float = 30.0) -> None:
    """SIGKILL `process`'s group, reap it, and wait until nothing listens on `port`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.process.pid, signal.SIGKILL)
    process.process.wait(timeout)
    process.stop()  # closes the log
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} still answers {timeout:g} s after SIGKILL")


def migrated_template(binary: Path, cache: Path) -> Path:
    """A data dir on which Label Studio has run its migrations and created the admin."""
    template = cache / f"ls-template-{LS_VERSION}"
    if (template / ".complete").exists():
        return template
    shutil.rmtree(template, ignore_errors=True)
    template.mkdir(parents=True)
    server = LabelStudioServer(binary, template, cache / "ls-template.log")
    try:
        server.wait(timeout=240)
    finally:
        server.stop()
    (template / ".complete").touch()
    return template


def start_label_studio(workdir: Path) -> LabelStudioServer:
    binary = ls_binary()
    if binary is None:
        raise FileNotFoundError("Label Studio is not installed: run scripts/bootstrap.sh, or "
                                "set MLASSIST_LS_VENV to a venv with label-studio==1.23.2")
    cache = Path(os.environ.get("MLASSIST_CACHE", Path.home() / ".cache" / "mlassist"))
    template = migrated_template(binary, cache)
    data_dir = workdir / "ls-data"
    shutil.copytree(template, data_dir, ignore=shutil.ignore_patterns(".complete"))
    return LabelStudioServer(binary, data_dir, workdir / "label-studio.log").wait(timeout=120)
