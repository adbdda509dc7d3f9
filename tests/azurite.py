"""A real Azurite (Azure Blob emulator) for the test session, on a free loopback port."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from backend.demo.localstack import Process, free_port, wait_port
from tests.labelstudio import kill_now

# Azurite's published development account (not a secret).
ACCOUNT = "devstoreaccount1"
KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
       "KBHBeksoGMGw==")


def azurite_binary() -> str | None:
    configured = os.environ.get("MLASSIST_AZURITE")
    if configured and Path(configured).exists():
        return configured
    return shutil.which("azurite-blob")


class Azurite:
    """`azurite-blob` on a loopback port (a free one by default), its data under `location`."""

    def __init__(self, binary: str, location: Path, log: Path, port: int | None = None) -> None:
        self.binary = binary
        self.location = location
        self.log = log
        self.port = port or free_port()
        self.connection_string = (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};")
        location.mkdir(parents=True, exist_ok=True)
        self._process = self._start()

    def _start(self) -> Process:
        process = Process(
            [self.binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
             "--location", str(self.location), "--skipApiVersionCheck", "--loose",
             "--disableTelemetry", "--silent"], os.environ, self.log)
        wait_port(self.port, 30, process)
        return process

    def running(self) -> bool:
        return self._process.running()

    def stop(self) -> None:
        """SIGTERM: Azurite saves its metadata (otherwise written every 5 s) and exits."""
        self._process.stop()

    def kill(self) -> None:
        """SIGKILL (a crash, not a shutdown) and wait until its port is closed."""
        kill_now(self._process, self.port)

    def restart(self) -> Azurite:
        """Start again on the same port and data folder (after stop() or kill())."""
        self._process.stop()
        self._process = self._start()
        return self
