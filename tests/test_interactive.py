"""Interactive annotation's pure parts: reading Label Studio's smart-tool context, matching a
click or a rough box to the model's boxes, and GrabCut refinement on drawn images."""

from __future__ import annotations

import numpy as np
import pytest

from backend.core.errors import BadRequest
from backend.labelstudio.label_config import parse_label_config
from backend.model.detector import Detections
from backend.serving.interactive import (
    Hint,
    box_iou,
    choose_label,
    match_box,
    match_click,
    parse_hint,
    target_for,
)
from backend.serving.refine import refine_box, refine_click

CONFIG = parse_label_config(
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="label" toName="image" smart="true">'
    '<Label value="person"/><Label value="vehicle" predicted_values="car"/></RectangleLabels>'
    '<KeyPointLabels name="kp" toName="image" smart="true">'
    '<Label value="person"/><Label value="car"/></KeyPointLabels></View>')


def keypoint(x: float, y: float, label: str = "car", positive: bool = True) -> dict:
    """A click as Label Studio 1.23's editor serializes a smart KeyPointLabels region."""
    return {"id": "k1", "from_name": "kp", "to_name": "image", "type": "keypointlabels",
            "origin": "manual", "original_width": 640, "original_height": 480,
            "image_rotation": 0, "is_positive": positive,
            "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]}}


def rectangle(x: float, y: float, w: float, h: float, label: str = "person") -> dict:
    return {"id": "r1", "from_name": "label", "to_name": "image", "type": "rectanglelabels",
            "origin": "manual", "original_width": 640, "original_height": 480,
            "image_rotation": 0, "is_positive": True,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0,
                      "rectanglelabels": [label]}}


def detections(*boxes: tuple[float, float, float, float, float, int]) -> Detections:
    return Detections(np.array([b[:4] for b in boxes], dtype=np.float32).reshape(-1, 4),
                      np.array([b[4] for b in boxes], dtype=np.float32),
                      np.array([b[5] for b in boxes], dtype=np.int64))


def scene() -> np.ndarray:
    """640x480 noisy grey background, a red rectangle 200..360 x 150..300 and a green disc
    of radius 40 at (480, 240)."""
    rng = np.random.default_rng(0)
    image = rng.normal(120, 25, (480, 640, 3)).clip(0, 255).astype(np.uint8)
    image[150:300, 200:360] = (220, 60, 30)
    yy, xx = np.mgrid[0:480, 0:640]
    image[(xx - 480) ** 2 + (yy - 240) ** 2 <= 40 ** 2] = (40, 200, 20)
    return image


def test_a_click_is_read_in_fractions_with_its_label() -> None:
    hint = parse_hint({"result": [keypoint(25.0, 50.0), keypoint(10, 10, positive=False)]})
    assert hint == Hint("image", "kp", "car", positives=((0.25, 0.5),),
                        negatives=((0.1, 0.1),))
    assert hint.points_pixels(hint.positives, 200, 100) == [(50.0, 50.0)]


def test_a_rough_box_is_read_as_corners() -> None:
    hint = parse_hint({"result": [rectangle(10, 20, 30, 40)]})
    assert hint is not None and hint.label == "person" and hint.from_name == "label"
    assert hint.box_pixels(100, 100) == pytest.approx((10, 20, 40, 60))
    assert hint.positives == ()


@pytest.mark.parametrize("context", [{}, {"result": []},
                                     {"result": [{"type": "brushlabels", "value": {}}]}])
def test_no_smart_region_is_no_hint(context: dict) -> None:
    assert parse_hint(context) is None


@pytest.mark.parametrize(("context", "words"), [
    ("click", "must be an object"),
    ({"result": "x"}, "must be a list"),
    ({"result": [7]}, "`value` object"),
    ({"result": [{**keypoint(1, 1), "value": {"x": "1", "y": 2}}]}, "value.x must be"),
    ({"result": [{**keypoint(1, 1), "value": {"x": float("nan"), "y": 2}}]}, "value.x"),
    ({"result": [{**keypoint(1, 1), "to_name": None}]}, "`to_name`"),
    ({"result": [rectangle(10, 10, 0, 0)]}, "non-empty box"),
])
def test_malformed_context_is_a_bad_request(context: object, words: str) -> None:
    with pytest.raises(BadRequest, match=words):
        parse_hint(context)


def test_iou_by_hand() -> None:
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0


def test_a_click_picks_the_smallest_confident_box_holding_it() -> None:
    found = detections((0, 0, 100, 100, 0.9, 2),   # a car around the click
                       (40, 40, 60, 60, 0.6, 1),   # the person the user clicked
                       (45, 45, 55, 55, 0.2, 1),   # smaller, but a stray low score
                       (200, 200, 300, 300, 0.99, 1))
    assert match_click(found, [(50, 50)], [], min_score=0.05) == 1
    # A click in two overlapping boxes; a negative click inside one leaves the other.
    overlapping = detections((0, 0, 60, 60, 0.8, 1), (40, 40, 100, 100, 0.7, 2))
    assert match_click(overlapping, [(50, 50)], [], min_score=0.05) == 0
    assert match_click(overlapping, [(50, 50)], [(10, 10)], min_score=0.05) == 1
    assert match_click(found, [(150, 150)], [], min_score=0.05) is None
    assert match_click(found, [(50, 50)], [], min_score=0.95) is None


def test_a_rough_box_picks_the_highest_iou() -> None:
    found = detections((0, 0, 100, 100, 0.9, 2), (10, 10, 50, 50, 0.3, 1))
    assert match_box(found, (12, 8, 55, 48), min_score=0.05) == 1
    assert match_box(found, (0, 0, 90, 110), min_score=0.05) == 0
    assert match_box(found, (300, 300, 400, 400), min_score=0.05) is None, "IoU under MIN_IOU"


def test_labels_the_user_choice_first() -> None:
    target = target_for(CONFIG, Hint("image", "kp", "car"))
    assert target is not None and target.from_name == "label"
    assert choose_label(target, "car", "person") == "vehicle", "by predicted_values"
    assert choose_label(target, "tree", "person") == "person", "unknown: the detection's"
    assert choose_label(target, None, None) == "person", "else the first label"
    assert target_for(CONFIG, Hint("other", "kp", None)) is None


def test_grabcut_tightens_a_rough_box_around_a_drawn_object() -> None:
    found = refine_box(scene(), (170, 120, 380, 330))
    assert found is not None
    assert (found.x1, found.y1, found.x2, found.y2) == pytest.approx((200, 150, 360, 300),
                                                                     abs=4)


def test_grabcut_finds_the_object_under_a_click() -> None:
    image = scene()
    disc = refine_click(image, [(480, 240)])
    assert disc is not None
    assert (disc.x1, disc.y1, disc.x2, disc.y2) == pytest.approx((440, 200, 521, 281), abs=4)
    block = refine_click(image, [(280, 220)])
    assert block is not None
    assert (block.x1, block.y1, block.x2, block.y2) == pytest.approx((200, 150, 360, 300),
                                                                     abs=4)


def test_grabcut_gives_up_on_hints_it_cannot_use() -> None:
    image = scene()
    assert refine_box(image, (0, 0, 3, 3)) is None, "a crop too small to learn from"
    assert refine_click(image, []) is None
    assert refine_click(np.zeros((4, 4, 3), np.uint8), [(2, 2)]) is None
