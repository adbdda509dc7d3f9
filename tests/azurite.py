"""A real Azurite (Azure Blob emulator) for the test session, on a free loopback port."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from backend.localstack import Process, free_port, wait_port

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
    """`azurite-blob` with its data in a temporary folder."""

    def __init__(self, binary: str, location: Path, log: Path) -> None:
        self.port = free_port()
        self.connection_string = (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};")
        location.mkdir(parents=True, exist_ok=True)
        self._process = Process(
            [binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
             "--location", str(location), "--skipApiVersionCheck", "--loose",
             "--disableTelemetry", "--silent"], os.environ, log)
        wait_port(self.port, 30, self._process)

    def stop(self) -> None:
        self._process.stop()
