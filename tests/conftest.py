from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.core.settings import Settings
from tests.azurite import Azurite, azurite_binary
from tests.httpserver import LoopbackServer
from tests.redis_server import RedisServer, redis_binary

BASE_ENV = {
    "LABEL_STUDIO_URL": "http://127.0.0.1:1",
    "LABEL_STUDIO_API_KEY": "test-legacy-token",
    "MODEL_WEIGHTS": "none",
    "DEVICE": "cpu",
    "TORCH_THREADS": "2",
}


def make_settings(**overrides: str) -> Settings:
    """Settings from BASE_ENV plus overrides given as environment variable names."""
    return Settings.from_env({**BASE_ENV, **overrides})


def require(found, what: str):
    """`found`, or fail in CI / skip elsewhere when `what` is not installed."""
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is not installed; scripts/bootstrap.sh installs it")
        pytest.skip(f"{what} is not installed; scripts/test.sh installs it")
    return found


@pytest.fixture
def loopback() -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        yield server


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    binary = require(azurite_binary(), "Azurite")
    tmp = tmp_path_factory.mktemp("azurite")
    server = Azurite(binary, tmp / "data", tmp / "azurite.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = require(redis_binary(), "redis-server")
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_db(redis_server: RedisServer):
    """A flushed Redis database for one test."""
    from redis import Redis

    client = Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.flushall()


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory):
    """A real Label Studio 1.23.2 for the whole session (projects keep tests apart)."""
    from tests.labelstudio import ls_binary, start_label_studio

    require(ls_binary(), "Label Studio")
    server = start_label_studio(tmp_path_factory.mktemp("label-studio"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(label_studio):
    from label_studio_sdk import LabelStudio

    from tests.labelstudio import ADMIN_TOKEN

    return LabelStudio(base_url=label_studio.url, api_key=ADMIN_TOKEN)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the reliability tally (tests/reliability.py) for .ci/run to print."""
    from tests import reliability

    reliability.write(Path(__file__).resolve().parents[1] / "test-artifacts" /
                      "reliability.json")
