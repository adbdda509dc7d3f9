"""The backend serves each project's champion, with its calibrated thresholds."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.http.app import create_app
from backend.model.architectures import build_untrained_model
from backend.model.checkpoint import save_checkpoint
from backend.model.registry import LocalStore, Registry
from backend.serving import champions
from tests import media
from tests.conftest import make_settings
from tests.fakes import FixedDetector, holder_for
from tests.httpserver import LoopbackServer
from tests.labels import CONFIG

ARCH = "ssdlite320_mobilenet_v3_large"
NAMES = ["__background__", "circle", "square", "triangle"]


def add_version(registry: Registry, tmp_path: Path, project: int,
                thresholds: dict[str, float | None], seed: int) -> str:
    import torch

    torch.manual_seed(seed)
    version = registry.reserve_version(project, ARCH)
    path = save_checkpoint(tmp_path / f"{version}.pt", arch=ARCH, class_names=NAMES,
                           state_dict=build_untrained_model(ARCH, 4).state_dict(),
                           model_version=version, extra={"thresholds": thresholds})
    registry.add(project, {"version": version, "class_names": NAMES, "arch": ARCH,
                           "metrics": {"ap50": 0.5}}, path, promote=True, keep=5)
    return version


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(LocalStore(tmp_path / "registry"), tmp_path / "cache")


def app_for(loopback: LoopbackServer, registry: Registry, **env: str):
    settings = make_settings(LABEL_STUDIO_URL=loopback.base,
                             ALLOWED_IMAGE_HOSTS=f"127.0.0.1:{loopback.port}", **env)
    base = FixedDetector([(0.1, 0.1, 0.5, 0.5, 0.9, 1)], version="base-1")
    return create_app(settings, holder=holder_for(base), registry=registry).test_client()


def predict(client, url: str, project: str) -> dict:
    body = {"tasks": [{"id": 1, "data": {"image": url}}], "label_config": CONFIG,
            "project": project}
    return client.post("/predict", json=body).get_json()["results"][0]


def test_projects_get_their_champion(tmp_path: Path, loopback: LoopbackServer,
                                     registry: Registry) -> None:
    version = add_version(registry, tmp_path, 4, {"circle": 0.0, "square": None,
                                                  "triangle": None}, seed=1)
    client = app_for(loopback, registry, SCORE_THRESHOLD="0.0")
    url = loopback.add("/s.png", media.png(320, 240))

    assert client.post("/setup", json={"project": "4.1700000000", "schema": CONFIG}
                       ).get_json()["model_version"] == version
    assert client.post("/setup", json={"project": "5.1700000000", "schema": CONFIG}
                       ).get_json()["model_version"] == "base-1"

    item = predict(client, url, "4.1700000000")
    assert item["model_version"] == version
    labels = {r["value"]["rectanglelabels"][0] for r in item["result"]}
    assert labels == {"circle"}, "uncalibrated classes are hidden"
    assert predict(client, url, "5.1700000000")["model_version"] == "base-1"

    shown = app_for(loopback, registry, SCORE_THRESHOLD="0.0", PRELABEL_UNCALIBRATED="show")
    labels = {r["value"]["rectanglelabels"][0] for r in predict(shown, url, "4.1")["result"]}
    assert {"circle", "square"} <= labels


def test_promotion_reaches_a_running_server(tmp_path: Path, loopback: LoopbackServer,
                                            registry: Registry,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(champions, "CHAMPION_TTL_S", 0.0)
    first = add_version(registry, tmp_path, 4, {"circle": 0.0}, seed=1)
    client = app_for(loopback, registry)
    url = loopback.add("/s.png", media.png(320, 240))
    assert predict(client, url, "4.1")["model_version"] == first
    second = add_version(registry, tmp_path, 4, {"circle": 0.0}, seed=2)
    assert predict(client, url, "4.1")["model_version"] == second
    registry.rollback(4)
    assert predict(client, url, "4.1")["model_version"] == first
    assert client.get("/versions?project=4").get_json() == {
        "versions": ["base-1", first, second]}
