"""Conversion between model boxes (xyxy pixels) and Label Studio rectangle regions.

Label Studio stores a rectangle as `x`, `y`, `width`, `height` in percent of the original image,
`x`/`y` being the top-left corner, plus `rotation` in degrees clockwise around that corner. The
image size is the one the labeler sees, i.e. after EXIF orientation is applied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIN_BOX_PIXELS = 1.0


@dataclass(frozen=True)
class PixelBox:
    """An axis-aligned box in pixels, (x1, y1) top-left and (x2, y2) bottom-right."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1


def clip_box(box: Sequence[float], width: int, height: int) -> PixelBox | None:
    """Clip an xyxy box to the image; None when it is degenerate (under a pixel, or NaN)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    if x2 - x1 < MIN_BOX_PIXELS or y2 - y1 < MIN_BOX_PIXELS:
        return None
    return PixelBox(x1, y1, x2, y2)


def to_region(box: Sequence[float], *, score: float, label: str, width: int, height: int,
              from_name: str, to_name: str, region_id: str | None = None) -> dict | None:
    """One Label Studio rectangle region from an xyxy pixel box; None if degenerate."""
    clipped = clip_box(box, width, height)
    if clipped is None:
        return None
    region = {
        "from_name": from_name,
        "to_name": to_name,
        "type": "rectanglelabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": 100.0 * clipped.x1 / width,
            "y": 100.0 * clipped.y1 / height,
            "width": 100.0 * clipped.width / width,
            "height": 100.0 * clipped.height / height,
            "rotation": 0,
            "rectanglelabels": [label],
        },
        "score": float(score),
    }
    if region_id is not None:
        region["id"] = region_id
    return region


def from_region_value(value: dict, width: int, height: int) -> PixelBox | None:
    """The axis-aligned pixel box covering a Label Studio rectangle value.

    A rotated rectangle is replaced by the bounding box of its corners. Returns None when the
    value is malformed or the box is degenerate after clipping to the image.
    """
    try:
        x = float(value["x"]) * width / 100.0
        y = float(value["y"]) * height / 100.0
        w = float(value["width"]) * width / 100.0
        h = float(value["height"]) * height / 100.0
        rotation = float(value.get("rotation") or 0.0)
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h, rotation)):
        return None
    if rotation % 360 == 0:
        return clip_box((x, y, x + w, y + h), width, height)
    angle = math.radians(rotation)
    cos, sin = math.cos(angle), math.sin(angle)
    corners = [(x + dx * cos - dy * sin, y + dx * sin + dy * cos)
               for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    return clip_box((min(xs), min(ys), max(xs), max(ys)), width, height)


def task_score(box_scores: Sequence[float]) -> float:
    """The task-level score stored on a prediction: the mean of its box scores, 0 when empty.

    Low means uncertain (or nothing found), so sorting tasks by prediction score ascending
    serves the least certain tasks first.
    """
    if not box_scores:
        return 0.0
    return float(sum(box_scores) / len(box_scores))
