"""A few real training steps on generated scenes: checkpoints, registry, serving, rollback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.core.errors import NotEnoughLabels
from backend.demo.scenes import make_scene
from backend.labelstudio.client import LabelStudioAuth
from backend.media.images import ImageFetcher
from backend.model.detector import checkpoint_detector
from backend.model.registry import LocalStore, Registry
from backend.model.training import round_steps, train_round
from tests.conftest import make_settings
from tests.labels import FakeLabelStudio, exported_tasks

PROJECT = 3


def settings_for(tmp_path: Path, **extra: str):
    values = {"MODEL_DIR": str(tmp_path / "models"), "IMAGE_CACHE_DIR": str(tmp_path / "images"),
              "VALIDATION_FRACTION": "0.3", "MIN_VALIDATION_IMAGES": "2",
              "TRAIN_BATCH_SIZE": "2", "MIN_FIRST_AP50": "0", "PROMOTION_MARGIN": "0"}
    return make_settings(**{**values, **extra})


def fetcher() -> ImageFetcher:
    return ImageFetcher(LabelStudioAuth("http://127.0.0.1:9", "k"), (), max_bytes=10**7,
                        max_pixels=10**8, timeout=5)


def run(tmp_path: Path, tasks: list[dict], registry: Registry, steps: int = 3, **extra: str):
    return train_round(PROJECT, settings_for(tmp_path, **extra), FakeLabelStudio(tasks),
                       fetcher(), registry, steps=steps)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(LocalStore(tmp_path / "registry"), tmp_path / "cache")


def test_round_writes_a_version_that_reloads_to_identical_predictions(
        tmp_path: Path, registry: Registry) -> None:
    result = run(tmp_path, exported_tasks(range(1, 13)), registry)
    assert result.version == "ssdlite320_mobilenet_v3_large-v1"
    assert result.promoted and "first model" in result.reason
    assert result.started_from.startswith("scratch")
    assert result.train_images + result.val_images == 12 and result.val_images >= 2
    record = registry.champion(PROJECT)
    assert record is not None and record["version"] == result.version
    assert record["class_names"] == ["__background__", "circle", "square", "triangle"]
    assert set(record["thresholds"]) == {"circle", "square", "triangle"}
    for name, entry in record["calibration"].items():
        if entry["threshold"] is None:
            assert "cannot reach precision 0.9" in entry["note"], name

    path = registry.checkpoint_path(PROJECT, result.version)
    images = [make_scene(seed).image for seed in (50, 51)]
    first = checkpoint_detector(path, None, "cpu").predict(images)
    again = checkpoint_detector(path, None, "cpu").predict(images)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_warm_start_gate_and_rollback(tmp_path: Path, registry: Registry) -> None:
    tasks = exported_tasks(range(1, 13))
    first = run(tmp_path, tasks, registry)
    # A margin no candidate can meet: the second round is measured, kept, and rejected.
    second = run(tmp_path, tasks, registry, PROMOTION_MARGIN="1")
    assert second.started_from == f"champion {first.version}"
    assert not second.promoted and "does not beat champion" in second.reason
    assert second.champion_metrics is not None
    first_record = registry.record(PROJECT, first.version)
    second_record = registry.record(PROJECT, second.version)
    assert second_record["val_task_ids"] == first_record["val_task_ids"], "same validation set"
    assert second.champion_metrics["images"] == second.val_images
    assert registry.champion(PROJECT)["version"] == first.version
    assert registry.record(PROJECT, second.version)["status"] == "rejected"

    images = [make_scene(seed).image for seed in (60, 61)]
    before = checkpoint_detector(registry.checkpoint_path(PROJECT, first.version), None,
                                 "cpu").predict(images)
    registry.promote(PROJECT, second.version)
    assert registry.champion(PROJECT)["version"] == second.version
    restored = registry.rollback(PROJECT)
    assert restored == first.version
    champion = registry.champion(PROJECT)
    after = checkpoint_detector(registry.checkpoint_path(PROJECT, champion["version"]), None,
                                "cpu").predict(images)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_label_added_later_re_heads_the_champion(tmp_path: Path, registry: Registry) -> None:
    tasks = exported_tasks(range(1, 13))
    run(tmp_path, tasks, registry)
    wider = FakeLabelStudio(tasks).config.replace(
        '</RectangleLabels>', '<Label value="star"/></RectangleLabels>')
    result = train_round(PROJECT, settings_for(tmp_path), FakeLabelStudio(tasks, wider),
                         fetcher(), registry, steps=2)
    assert "re-headed for the new label set" in result.started_from
    assert registry.record(PROJECT, result.version)["class_names"][-1] == "star"


def test_too_few_labels_says_how_many(tmp_path: Path, registry: Registry) -> None:
    with pytest.raises(NotEnoughLabels) as info:
        run(tmp_path, exported_tasks(range(1, 4)), registry, MIN_VALIDATION_IMAGES="5")
    assert "validation" in str(info.value) and "at least 1 and 5" in str(info.value)
    assert registry.versions(PROJECT) == []


def test_broken_images_are_skipped_and_counted(tmp_path: Path, registry: Registry) -> None:
    tasks = exported_tasks(range(1, 13))
    tasks[0]["data"]["image"] = "data:image/png;base64,AAAA"
    tasks[1]["data"]["image"] = "http://not-allowed.example/x.png"
    result = run(tmp_path, tasks, registry, steps=2)
    assert result.dataset["skipped"] == {"image_not_an_image": 1, "image_host_not_allowed": 1}
    assert result.train_images + result.val_images == 10


def test_round_steps_grow_with_the_training_set(tmp_path: Path) -> None:
    fixed = settings_for(tmp_path, TRAIN_STEPS="500")
    assert round_steps(24, fixed) == round_steps(2000, fixed) == 500  # TRAIN_EPOCHS off
    growing = settings_for(tmp_path, TRAIN_STEPS="1500", TRAIN_EPOCHS="10",
                           TRAIN_BATCH_SIZE="4")
    assert round_steps(24, growing) == 500  # 60 steps: TRAIN_MIN_STEPS' 500 instead
    assert round_steps(300, growing) == 750  # 10 passes over 300 images, 4 a step
    assert round_steps(301, growing) == 753
    assert round_steps(1000, growing) == 1500  # 2,500 capped at TRAIN_STEPS
    short = settings_for(tmp_path, TRAIN_STEPS="20", TRAIN_EPOCHS="10")
    assert round_steps(300, short) == 20  # TRAIN_STEPS caps the floor too
