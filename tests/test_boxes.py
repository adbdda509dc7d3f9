from __future__ import annotations

import math

import pytest

from backend.labelstudio.boxes import clip_box, from_region_value, task_score, to_region


def test_pixel_box_to_percent_region() -> None:
    # 640x480 image, box from (64, 48) to (320, 240): 10 %, 10 %, 40 % wide, 40 % high.
    region = to_region([64, 48, 320, 240], score=0.875, label="car", width=640, height=480,
                       from_name="label", to_name="image", region_id="r1")
    assert region == {
        "id": "r1", "from_name": "label", "to_name": "image", "type": "rectanglelabels",
        "original_width": 640, "original_height": 480, "image_rotation": 0,
        "value": {"x": 10.0, "y": 10.0, "width": 40.0, "height": 40.0, "rotation": 0,
                  "rectanglelabels": ["car"]},
        "score": 0.875,
    }


def test_boxes_are_clipped_to_the_image() -> None:
    # (-20, -10)-(120, 60) on a 100x50 image clips to the whole image.
    region = to_region([-20, -10, 120, 60], score=0.5, label="a", width=100, height=50,
                       from_name="l", to_name="i")
    assert region is not None
    assert region["value"]["x"] == 0.0 and region["value"]["y"] == 0.0
    assert region["value"]["width"] == 100.0 and region["value"]["height"] == 100.0


@pytest.mark.parametrize("box", [
    [10, 10, 10.5, 40],          # under one pixel wide
    [10, 10, 40, 10],            # zero height
    [200, 10, 300, 40],          # entirely right of a 100 px image
    [math.nan, 0, 10, 10],       # NaN
    [0, 0, math.inf, 10],        # infinite
])
def test_degenerate_boxes_are_dropped(box: list[float]) -> None:
    assert clip_box(box, 100, 50) is None
    assert to_region(box, score=1, label="a", width=100, height=50, from_name="l",
                     to_name="i") is None


def test_swapped_corners_are_reordered() -> None:
    box = clip_box([40, 30, 10, 5], 100, 50)
    assert box is not None and (box.x1, box.y1, box.x2, box.y2) == (10, 5, 40, 30)


def test_region_value_back_to_pixels() -> None:
    box = from_region_value({"x": 10, "y": 15, "width": 30, "height": 40, "rotation": 0}, 320, 240)
    assert box is not None
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((32, 36, 128, 132))


def test_rotated_region_becomes_its_bounding_box() -> None:
    # 20x10 px at (50, 50) rotated 90 deg clockwise about its top-left corner spans
    # x 40..50 and y 50..70 (on a 100x100 image, percent equals pixels).
    box = from_region_value({"x": 50, "y": 50, "width": 20, "height": 10, "rotation": 90},
                            100, 100)
    assert box is not None
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((40, 50, 50, 70))


@pytest.mark.parametrize("value", [{}, {"x": "a", "y": 0, "width": 1, "height": 1},
                                   {"x": None, "y": 0, "width": 1, "height": 1}])
def test_malformed_region_values_are_none(value: dict) -> None:
    assert from_region_value(value, 100, 100) is None


def test_task_score_is_mean_box_score() -> None:
    assert task_score([0.9, 0.5, 0.7]) == pytest.approx(0.7)
    assert task_score([]) == 0.0
