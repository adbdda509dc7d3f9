from __future__ import annotations

import numpy as np
import pytest

from backend.demo.scenes import make_scene
from backend.labelstudio.boxes import to_region
from backend.labelstudio.label_config import parse_label_config
from backend.media.images import LoadedImage
from backend.model.dataset import (
    DatasetReport,
    Sample,
    chosen_annotation,
    class_names_for,
    hold_out_at_least,
    is_validation,
    resolve_boxes,
    samples_from_tasks,
    split_rank,
)

CONFIG = parse_label_config(
    '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
    '<Label value="circle"/><Label value="square"/><Label value="triangle"/>'
    '</RectangleLabels></View>')
NAMES = class_names_for(CONFIG)


def annotation(result: list, **extra: object) -> dict:
    return {"id": extra.pop("id", 1), "result": result, "was_cancelled": False,
            "ground_truth": False, "updated_at": "2026-01-01T00:00:00Z", **extra}


def test_class_names_follow_the_config() -> None:
    assert NAMES == ["__background__", "circle", "square", "triangle"]


def test_round_trip_scene_boxes_through_label_studio_regions() -> None:
    scene = make_scene(5, 320, 240)
    regions = [to_region(box, score=1.0, label=label, width=320, height=240,
                         from_name="label", to_name="image")
               for box, label in zip(scene.boxes, scene.labels, strict=True)]
    task = {"id": 7, "data": {"image": "http://x/7.jpg"}, "annotations": [annotation(regions)]}
    report = DatasetReport()
    [sample] = samples_from_tasks([task], CONFIG, NAMES, 0.2, report)
    resolve_boxes(sample, LoadedImage(scene.image), report)
    np.testing.assert_allclose(sample.boxes, np.array(scene.boxes, np.float32), atol=1e-3)
    assert [NAMES[i] for i in sample.labels] == scene.labels
    assert report.boxes == len(scene.boxes) and report.negatives == 0


def test_which_annotation_counts() -> None:
    old = annotation([], id=1, updated_at="2026-01-01T00:00:00Z")
    new = annotation([], id=2, updated_at="2026-02-01T00:00:00Z")
    skipped = annotation([], id=3, updated_at="2026-03-01T00:00:00Z", was_cancelled=True)
    truth = annotation([], id=4, updated_at="2025-01-01T00:00:00Z", ground_truth=True)
    assert chosen_annotation({"annotations": [old, new, skipped]})["id"] == 2
    assert chosen_annotation({"annotations": [old, new, truth]})["id"] == 4
    assert chosen_annotation({"annotations": [skipped]}) is None
    assert chosen_annotation({"annotations": []}) is None


def test_unknown_labels_empty_and_malformed_regions_are_counted() -> None:
    good = {"from_name": "label", "to_name": "image", "type": "rectanglelabels",
            "value": {"x": 10, "y": 10, "width": 20, "height": 20,
                      "rectanglelabels": ["square"]}}
    unknown = {**good, "value": {**good["value"], "rectanglelabels": ["hexagon"]}}
    malformed = {**good, "value": {"x": 1}}
    degenerate = {**good, "value": {**good["value"], "width": 0}}
    other_tag = {**good, "from_name": "other"}
    tasks = [
        {"id": 1, "data": {"image": "a"}, "annotations": [
            annotation([good, unknown, malformed, degenerate, other_tag])]},
        {"id": 2, "data": {"image": "b"}, "annotations": [annotation([])]},  # a negative
        {"id": 3, "data": {"image": "c"}, "annotations": []},                 # unlabeled
        {"id": 4, "data": {"picture": "d"}, "annotations": [annotation([good])]},
    ]
    report = DatasetReport()
    samples = samples_from_tasks(tasks, CONFIG, NAMES, 0.2, report)
    image = LoadedImage(make_scene(1).image)
    for sample in samples:
        resolve_boxes(sample, image, report)
    assert [s.task_id for s in samples] == [1, 2]
    assert samples[0].labels.tolist() == [2]
    assert samples[0].boxes[0].tolist() == pytest.approx([32.0, 24.0, 96.0, 72.0])
    assert samples[1].boxes.shape == (0, 4)
    assert report.to_dict() == {
        "tasks_seen": 4, "tasks_labeled": 3, "negatives": 1, "boxes": 1,
        "skipped": {"unknown_label": 1, "malformed_region": 1, "degenerate_box": 1,
                    "no_image_key": 1}}


def test_split_is_frozen_and_near_the_fraction() -> None:
    first = [is_validation(task_id, 0.2) for task_id in range(1, 5001)]
    again = [is_validation(task_id, 0.2) for task_id in range(1, 5001)]
    assert first == again
    assert 0.18 < sum(first) / len(first) < 0.22
    assert not any(is_validation(task_id, 0.0) for task_id in range(100))
    assert all(is_validation(task_id, 1.0) for task_id in range(100))


def _samples(task_ids: range, fraction: float) -> list[Sample]:
    return [Sample(task_id, "image", f"/t/{task_id}.png", np.zeros((0, 4), np.float32),
                   np.zeros(0, np.int64), is_validation(task_id, fraction))
            for task_id in task_ids]


def test_a_small_label_set_is_topped_up_to_the_minimum_by_split_rank() -> None:
    # 30 tasks at 20 %: the hash split holds out too few for some id ranges; find one.
    ids = next(range(start, start + 30) for start in range(1, 10_000, 30)
               if sum(is_validation(t, 0.2) for t in range(start, start + 30)) < 5)
    samples = _samples(ids, 0.2)
    natural = {s.task_id for s in samples if s.validation}
    added = hold_out_at_least(samples, 5)
    held = {s.task_id for s in samples if s.validation}
    assert len(held) == 5 and added == 5 - len(natural) and natural <= held
    # The additions are the training tasks nearest the line, not a random pick.
    rest = sorted((t for t in ids if t not in natural), key=split_rank)
    assert held - natural == set(rest[:added])
    assert hold_out_at_least(samples, 5) == 0, "idempotent"


def test_the_hash_split_alone_is_kept_when_it_holds_enough() -> None:
    samples = _samples(range(1, 501), 0.2)
    before = [s.validation for s in samples]
    assert hold_out_at_least(samples, 5) == 0
    assert [s.validation for s in samples] == before


def test_at_least_one_task_stays_for_training() -> None:
    samples = _samples(range(1, 4), 0.0)
    assert hold_out_at_least(samples, 5) == 2
    assert sum(not s.validation for s in samples) == 1
