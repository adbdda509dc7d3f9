from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backend.core.errors import ModelError
from backend.demo.scenes import make_scene
from backend.labelstudio.label_config import coverage, parse_label_config
from backend.model.architectures import build_untrained_model, coco_weights_path
from backend.model.checkpoint import load_checkpoint, save_checkpoint
from backend.model.detector import ModelSpec, load_detector
from tests.conftest import make_settings

ARCH = "ssdlite320_mobilenet_v3_large"
COCO_PROJECT = parse_label_config(
    '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
    '<Label value="Person"/><Label value="vehicle" predicted_values="car,truck"/>'
    '<Label value="pallet"/></RectangleLabels></View>')


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def test_missing_coco_weights_name_the_file_to_fetch(torch_home: Path) -> None:
    spec = ModelSpec.from_settings(make_settings(MODEL_WEIGHTS="coco"))
    with pytest.raises(ModelError) as info:
        load_detector(spec, "cpu")
    message = str(info.value)
    assert str(coco_weights_path(ARCH)) in message
    assert str(torch_home) in message
    assert "https://download.pytorch.org/models/ssdlite320_mobilenet_v3_large_coco" in message


def test_missing_coco_weights_fall_back_when_configured(torch_home: Path) -> None:
    spec = ModelSpec.from_settings(make_settings(MODEL_WEIGHTS="coco",
                                                 MODEL_WEIGHTS_FALLBACK="none"))
    detector = load_detector(spec, "cpu")
    assert detector.version == f"{ARCH}-untrained"


def test_coco_weights_from_the_cache_give_day_zero_coverage(torch_home: Path) -> None:
    # Stand-in for torchvision's file: same architecture and keys, placed where the cache is.
    path = coco_weights_path(ARCH)
    path.parent.mkdir(parents=True)
    torch.save(build_untrained_model(ARCH, num_classes=91).state_dict(), path)
    spec = ModelSpec.from_settings(make_settings(MODEL_WEIGHTS="coco"))
    detector = load_detector(spec, "cpu")
    assert detector.version == f"{ARCH}-coco"
    assert len(detector.class_names) == 91
    assert coverage(detector.class_names, COCO_PROJECT) == {
        "covered": ["Person", "vehicle"], "uncovered": ["pallet"]}


def test_corrupt_coco_file_says_to_fetch_again(torch_home: Path) -> None:
    path = coco_weights_path(ARCH)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"partial download")
    with pytest.raises(ModelError, match="could not be loaded"):
        load_detector(ModelSpec.from_settings(make_settings(MODEL_WEIGHTS="coco")), "cpu")


def test_checkpoint_round_trip_and_version(tmp_path: Path) -> None:
    names = ["__background__", "circle", "square"]
    model = build_untrained_model(ARCH, num_classes=3)
    path = save_checkpoint(tmp_path / "m.pt", arch=ARCH, class_names=names,
                           state_dict=model.state_dict(), model_version="v7",
                           metrics={"ap50": 0.5})
    assert not list(tmp_path.glob(".m.pt.*")), "no temp file left behind"
    assert load_checkpoint(path)["metrics"] == {"ap50": 0.5}
    spec = ModelSpec.from_settings(make_settings(MODEL_WEIGHTS=str(path)))
    assert spec.version.startswith("m-") and len(spec.version) == 12
    detector = load_detector(spec, "cpu", threads=2)
    assert detector.class_names == names
    scene = make_scene(3)
    [detections] = detector.predict([scene.image])
    assert detections.boxes.shape[1] == 4
    assert len(detections.boxes) == len(detections.scores) == len(detections.labels)
    assert set(detections.labels.tolist()) <= {1, 2}


def test_bad_checkpoints_are_refused_clearly(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot be read"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    with pytest.raises(ModelError, match="not an MLAssist checkpoint"):
        load_checkpoint(other)
    mismatched = save_checkpoint(tmp_path / "mismatch.pt", arch=ARCH,
                                 class_names=["__background__", "a"],
                                 state_dict=build_untrained_model(ARCH, 5).state_dict())
    with pytest.raises(ModelError, match="does not fit"):
        load_detector(ModelSpec(ARCH, str(mismatched), "error", "x"), "cpu")


def test_scenes_are_deterministic_and_boxed() -> None:
    first, again = make_scene(11), make_scene(11)
    assert first.boxes == again.boxes and first.labels == again.labels
    assert first.image.tobytes() == again.image.tobytes()
    assert 1 <= len(first.boxes) <= 5
    for x1, y1, x2, y2 in first.boxes:
        assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240


def test_coco_file_names_match_torchvision() -> None:
    from backend.model.architectures import ARCHITECTURES

    for name, arch in ARCHITECTURES.items():
        if arch.weights_enum is None:
            with pytest.raises(ModelError, match="no COCO weights"):
                coco_weights_path(name)
            continue
        url = arch.coco_weights().url
        assert url.rsplit("/", 1)[1] == arch.coco_file, name
        assert coco_weights_path(name).parent == Path(torch.hub.get_dir()) / "checkpoints"


def test_fallback_is_decided_before_loading(torch_home: Path) -> None:
    spec = ModelSpec.from_settings(make_settings(MODEL_WEIGHTS="coco",
                                                 MODEL_WEIGHTS_FALLBACK="none"))
    assert spec.version == f"{ARCH}-untrained" and spec.weights == "none"
