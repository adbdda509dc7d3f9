"""Running Label Studio and the backend as local processes (the demo stack and the tests).

Label Studio reads the admin user and legacy token from the environment only when it creates
its organization, on the very first start of a data dir (LABEL_STUDIO_FACTS.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import requests


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


FAST_PREDICTION_IMPORT_FLAG = (
    "fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short")


def label_studio_env(data_dir: Path, username: str, password: str, token: str,
                     base: Mapping[str, str] | None = None,
                     files_root: Path | None = None) -> dict[str, str]:
    """Environment for `label-studio start` with a preset admin and loopback backends allowed;
    with `files_root`, Label Studio serves files under it at /data/local-files/?d=<relative>
    (to users of a project with a local-files storage on that folder)."""
    local_files = {} if files_root is None else {
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root)}
    return {
        # Label Studio 1.23's bulk prediction import recounts every task of the project on
        # each call (0.1 s at 2,000 tasks, 3 s at 20,000) unless this flag is on; then it
        # recounts only the tasks it touched (benchmarks/scale.py). The environment may
        # still turn it off.
        FAST_PREDICTION_IMPORT_FLAG: "true",
        **local_files,
        **(os.environ if base is None else base),
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_USERNAME": username,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        # Both, or ML backends and webhooks on loopback get 403.
        "SSRF_PROTECTION_ENABLED": "false",
        "ML_BLOCK_LOCAL_IP": "false",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
    }


class Process:
    """A child process in its own session, logging to a file; stop() ends its whole group."""

    def __init__(self, argv: list[str], env: Mapping[str, str], log: Path,
                 cwd: Path | None = None) -> None:
        self.log = log
        self._handle = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(  # noqa: S603 - argv is ours, never user input
            argv, env=dict(env), cwd=cwd, stdout=self._handle,
            stderr=subprocess.STDOUT, start_new_session=True)

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 30.0, grace: float = 10.0) -> None:
        """SIGTERM the group; after `grace` s SIGTERM again (an RQ worker's second signal
        kills its work horse, which runs in a session of its own); SIGKILL what is left of
        the group and of the process's descendants at `timeout`."""
        if self.running():
            family = descendants(self.process.pid)
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                family |= descendants(self.process.pid)
                _signal_group(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(max(0.0, timeout - grace))
                except subprocess.TimeoutExpired:
                    _signal_group(self.process.pid, signal.SIGKILL)
                    self.process.wait(10)
            for pid in family:  # a grandchild in its own session outlives the group
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        self._handle.close()


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def descendants(pid: int) -> set[int]:
    """The pids below `pid` in the process tree (Linux /proc), now."""
    found: set[int] = set()
    pending = [pid]
    while pending:
        parent = pending.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                pids = {int(child) for child in children.read_text().split()}
            except OSError:
                continue
            pending.extend(pids - found)
            found |= pids
    return found


def wait_port(port: int, timeout: float, process: Process) -> None:
    """Wait until something listens on 127.0.0.1:`port`; fail early if `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.running():
            raise RuntimeError(f"process exited before listening on {port}: "
                               f"{process.log.read_text(errors='replace')[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on port {port} within {timeout:g} s")


def wait_http(url: str, timeout: float, process: Process | None = None,
              tick: Callable[[float], None] | None = None) -> None:
    """Wait until GET `url` answers 200; fail early, with the log's tail, if `process` dies."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process is not None and not process.running():
            tail = process.log.read_text(errors="replace")[-3000:] if process.log.exists() \
                else ""
            raise RuntimeError(f"process exited ({process.process.returncode}) before {url} "
                               f"answered; log tail:\n{tail}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if tick is not None:
            tick(time.monotonic() - started)
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:g} s")


def upload_images(ls_url: str, headers: Mapping[str, str], project: int,
                  files: list[tuple[str, bytes, str]], per_request: int = 50) -> None:
    """Upload image files to a Label Studio project, one task each.

    Each file needs its own form field name (Label Studio keeps one file per name), and Django
    refuses more than 100 files in one request.
    """
    for start in range(0, len(files), per_request):
        chunk = files[start:start + per_request]
        form = [(f"file{i}", (name, data, mime)) for i, (name, data, mime) in enumerate(chunk)]
        response = requests.post(f"{ls_url}/api/projects/{project}/import",
                                 headers=dict(headers), files=form, timeout=600)
        response.raise_for_status()
