from __future__ import annotations

from collections.abc import Iterator

import pytest

from backend.settings import Settings
from tests.httpserver import LoopbackServer

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


@pytest.fixture
def loopback() -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        yield server
