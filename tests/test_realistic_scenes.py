"""The realistic scene set (benchmarks/realistic): deterministic, long-tailed, valid COCO, and
a small instance that the training pipeline learns something measurable on."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.labelstudio.client import LabelStudioAuth
from backend.media.images import ImageFetcher
from backend.model.architectures import build_model
from backend.model.engine import predict
from backend.model.evaluation import ImageTruth, coco_metrics
from backend.model.registry import LocalStore, Registry
from backend.model.training import train_round
from benchmarks.realistic import (
    CLASS_NAMES,
    MissingMaterial,
    class_frequencies,
    label_config,
    make_scene,
    preset_for,
    write_dataset,
)
from benchmarks.realistic import material as material_module
from benchmarks.realistic.catalog import CLASSES, DISTRACTORS, LOOKALIKES
from benchmarks.realistic.compose import MIN_BOX_SIDE
from tests.conftest import make_settings
from tests.labels import FakeLabelStudio, regions_of

SMALL = (240, 180)  # every property below holds at any size; small is fast
LEARNING_STEPS = 240  # about a minute on 2 cores (shared/TORCH_FACTS.md: 0.23 s a step)


@pytest.fixture(scope="module")
def material() -> None:
    """The photos and the emoji font, or a failure in CI (a skip elsewhere) naming the package."""
    try:
        material_module.backgrounds()
        for name, character in CLASSES + DISTRACTORS + LOOKALIKES:
            material_module.sprite(name, character)
    except MissingMaterial as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}")
        pytest.skip(f"{exc}")


@pytest.fixture(scope="module")
def sets(material: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """A small standard and a small hard set on disk, as their COCO dicts."""
    root = tmp_path_factory.mktemp("realistic")
    return {preset: write_dataset(root / preset, 120, preset, seed=5, width=SMALL[0],
                                  height=SMALL[1]) | {"folder": root / preset}
            for preset in ("standard", "hard")}


def test_same_seed_same_bytes_other_seed_other_scene(material: None, tmp_path: Path) -> None:
    first = make_scene(3, "standard", seed=1)
    again = make_scene(3, "standard", seed=1)
    assert first.jpeg == again.jpeg and first.boxes == again.boxes
    assert first.labels == again.labels
    assert make_scene(3, "standard", seed=2).jpeg != first.jpeg
    assert make_scene(4, "standard", seed=1).jpeg != first.jpeg
    assert make_scene(3, "hard", seed=1).jpeg != first.jpeg

    a = write_dataset(tmp_path / "a", 5, "hard", seed=9, width=200, height=150)
    b = write_dataset(tmp_path / "b", 5, "hard", seed=9, width=200, height=150)
    assert a == b
    assert (tmp_path / "a/coco.json").read_bytes() == (tmp_path / "b/coco.json").read_bytes()
    for image in a["images"]:
        name = image["file_name"]
        assert (tmp_path / "a/images" / name).read_bytes() == \
            (tmp_path / "b/images" / name).read_bytes()


def test_at_least_20_visually_distinct_classes_and_no_distractor_among_them(
        material: None) -> None:
    assert len(CLASS_NAMES) >= 20 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    glyphs = {character for _, character in CLASSES}
    others = DISTRACTORS + LOOKALIKES
    assert not glyphs & {character for _, character in others}
    assert not set(CLASS_NAMES) & {name for name, _ in others}
    thumbs = [np.asarray(material_module.sprite(*c).image.convert("RGB").resize((24, 24)),
                         dtype=np.float32) for c in CLASSES]
    closest = min(np.abs(a - b).mean() for i, a in enumerate(thumbs) for b in thumbs[i + 1:])
    assert closest > 12, "two classes' artwork looks nearly the same"


def test_class_frequencies_are_long_tailed(sets: dict[str, dict]) -> None:
    frequencies = class_frequencies()
    assert frequencies.sum() == pytest.approx(1.0)
    assert np.all(np.diff(frequencies) < 0) and frequencies[-1] / frequencies[0] <= 0.1
    for coco in sets.values():
        realized = Counter(a["category_id"] for a in coco["annotations"])
        assert len(realized) == len(CLASS_NAMES), "every class appears"
        assert min(realized.values()) / max(realized.values()) <= 0.1
        counts = coco["info"]["class_counts"]
        assert [counts[name] for name in CLASS_NAMES] == \
            [realized[k + 1] for k in range(len(CLASS_NAMES))]


@pytest.mark.parametrize("preset", ["standard", "hard"])
def test_objects_counts_sizes_and_boxes(sets: dict[str, dict], preset: str) -> None:
    coco, spec = sets[preset], preset_for(preset, *SMALL)
    per_image = Counter(a["image_id"] for a in coco["annotations"])
    counts = [per_image[image["id"]] for image in coco["images"]]
    assert min(counts) == 0 and max(counts) <= 15
    assert max(counts) >= (8 if preset == "standard" else 12)
    largest = spec.max_size_fraction * min(SMALL) + 1
    whole = []
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= SMALL[0] and y + h <= SMALL[1]
        assert min(w, h) >= MIN_BOX_SIDE and max(w, h) <= largest
        assert a["area"] == pytest.approx(w * h) and a["iscrowd"] == 0
        if a["visible_fraction"] >= 0.999 and not a["truncated"]:
            whole.append(max(w, h))
    assert min(whole) >= spec.min_size - 3 and max(whole) >= largest * 0.7
    share = np.mean([a["truncated"] for a in coco["annotations"]])
    occluded = np.mean([a["visible_fraction"] < 0.95 for a in coco["annotations"]])
    assert 0.05 < share < 0.5 and 0.05 < occluded < 0.6, (share, occluded)
    assert coco["info"]["distractors"] > len(coco["images"]), "distractors in most images"


def test_the_hard_preset_is_harder(sets: dict[str, dict]) -> None:
    standard, hard = sets["standard"]["info"], sets["hard"]["info"]
    assert len(sets["hard"]["annotations"]) > len(sets["standard"]["annotations"])
    assert hard["distractors"] > standard["distractors"]
    assert hard["truncated_objects"] > standard["truncated_objects"]
    assert hard["recipe"]["jpeg_quality"][1] < standard["recipe"]["jpeg_quality"][0] + 20


def test_the_coco_file_loads_in_pycocotools_and_matches_the_images(
        sets: dict[str, dict]) -> None:
    from pycocotools.coco import COCO

    coco = sets["standard"]
    ground = COCO(str(coco["folder"] / "coco.json"))
    assert len(ground.getImgIds()) == 120
    assert len(ground.getAnnIds()) == len(coco["annotations"]) > 300
    assert [c["name"] for c in ground.loadCats(ground.getCatIds())] == list(CLASS_NAMES)
    for image in coco["images"][:10]:
        with Image.open(coco["folder"] / "images" / image["file_name"]) as decoded:
            assert decoded.format == "JPEG"
            assert decoded.size == (image["width"], image["height"]) == SMALL
    assert {s["package"] for s in coco["info"]["sources"]} == {
        "Debian lomiri-wallpapers-16.04", "Debian fonts-noto-color-emoji"}


def test_missing_material_names_the_package(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    material_module.backgrounds.cache_clear()
    monkeypatch.setattr(material_module, "PHOTO_DIR", tmp_path / "none")
    with pytest.raises(MissingMaterial, match="apt-get install lomiri-wallpapers-16.04"):
        material_module.backgrounds()
    monkeypatch.undo()
    material_module.backgrounds.cache_clear()

    material_module._font.cache_clear()
    material_module.sprite.cache_clear()
    monkeypatch.setattr(material_module, "EMOJI_FONT", tmp_path / "none.ttf")
    with pytest.raises(MissingMaterial, match="apt-get install fonts-noto-color-emoji"):
        material_module.sprite("car", "\U0001F697")
    monkeypatch.undo()
    material_module._font.cache_clear()
    material_module.sprite.cache_clear()


def test_the_command_line_writes_a_set(material: None, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.realistic", str(tmp_path / "set"),
                           "--count", "3", "--preset", "hard", "--size", "160x120",
                           "--sheet", str(tmp_path / "sheet.png")],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["images"] == 3 and summary["preset"] == "hard"
    assert sorted(p.name for p in (tmp_path / "set/images").iterdir()) == [
        "scene-00000.jpg", "scene-00001.jpg", "scene-00002.jpg"]
    assert Image.open(tmp_path / "sheet.png").size[0] > 160


def test_the_training_pipeline_learns_a_small_realistic_instance(material: None,
                                                                 tmp_path: Path) -> None:
    """A small instance (the 4 most common classes, objects of 40 px and more, photographs,
    distractors, every degradation of the standard preset), trained from scratch through
    train_round: the validation AP50 rises well above an untrained model's on the same images.
    Not the benchmark (that is benchmarks/learning.py --scenes realistic): a check that the
    set's boxes and labels reach the model and mean something to it."""
    import torch
    from torchvision.transforms.functional import pil_to_tensor

    spec = preset_for("standard", 320, 240, classes=4, min_size=40.0, max_distractors=2)
    scenes = {i + 1: make_scene(i, spec, seed=11) for i in range(64)}
    tasks = [{"id": task_id,
              "data": {"image": "data:image/jpeg;base64," + base64.b64encode(scene.jpeg).decode()},
              "annotations": [{"id": task_id, "result": regions_of(scene), "was_cancelled": False,
                               "ground_truth": False, "updated_at": "2026-11-26T00:00:00Z"}]}
             for task_id, scene in scenes.items()]
    settings = make_settings(MODEL_DIR=str(tmp_path / "models"),
                             IMAGE_CACHE_DIR=str(tmp_path / "images"),
                             VALIDATION_FRACTION="0.25", MIN_VALIDATION_IMAGES="12",
                             TRAIN_BATCH_SIZE="4", MIN_FIRST_AP50="0", PROMOTION_MARGIN="0")
    registry = Registry(LocalStore(tmp_path / "registry"), tmp_path / "cache")
    fetcher = ImageFetcher(LabelStudioAuth("http://127.0.0.1:9", "k"), (), max_bytes=10**7,
                           max_pixels=10**8, timeout=5)
    result = train_round(3, settings, FakeLabelStudio(tasks, label_config(spec.classes)),
                         fetcher, registry, steps=LEARNING_STEPS)
    record = registry.record(3, result.version)

    names = record["class_names"]
    val = [scenes[task_id] for task_id in record["val_task_ids"]]
    truths = [ImageTruth(np.array(s.boxes, np.float32).reshape(-1, 4),
                         np.array([names.index(label) for label in s.labels]), spec.width,
                         spec.height)
              for s in val]
    torch.manual_seed(0)
    untrained = build_model(settings.model_arch, num_classes=len(names))
    images = [pil_to_tensor(s.image).float() / 255 for s in val]
    baseline = coco_metrics(truths, predict(untrained, images), names).ap50
    trained = result.metrics["ap50"]
    # Measured once (2 cores, 1 thread): 0.77 against an untrained 0.003.
    assert trained >= 0.3 and trained >= baseline + 0.25, (trained, baseline)
    loss = record["loss"]
    assert loss[-1] < 0.5 * loss[0], loss
