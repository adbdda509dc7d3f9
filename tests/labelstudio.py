"""A real Label Studio server for the test session, started from a migrated template.

The first start of a data dir runs migrations (25-90 s); a copy of an already-migrated dir
starts in seconds. The template lives in $MLASSIST_CACHE (outside the checkout) and is rebuilt
when missing. Label Studio itself comes from $MLASSIST_LS_VENV (scripts/bootstrap.sh).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.services import free_port, wait_http

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


def _environment(data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_USERNAME": ADMIN_EMAIL,
        "LABEL_STUDIO_PASSWORD": ADMIN_PASSWORD,
        "LABEL_STUDIO_USER_TOKEN": ADMIN_TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        # Both, or loopback ML backends and webhooks get 403 (LABEL_STUDIO_FACTS.md).
        "SSRF_PROTECTION_ENABLED": "false",
        "ML_BLOCK_LOCAL_IP": "false",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "DJANGO_DB": "sqlite",
    }


class LabelStudioServer:
    """`label-studio start` on a free loopback port with its own data dir."""

    def __init__(self, binary: Path, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log = log
        self._handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [str(binary), "start", "--no-browser", "--internal-host", "127.0.0.1",
             "--port", str(self.port)],
            env=_environment(data_dir), stdout=self._handle, stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait(self, timeout: float) -> LabelStudioServer:
        wait_http(f"{self.url}/health", timeout, self.process, self.log)
        return self

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._handle.close()


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
