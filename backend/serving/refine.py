"""A box from a hint without a model: OpenCV's GrabCut on a small crop around the hint.

Used by interactive annotation when the champion has nothing near the user's click or rough
box. GrabCut costs grow with the pixels it sees, so it runs on the hint's neighbourhood scaled
down to at most MAX_SIDE pixels, for a few iterations: tens of milliseconds on one core
(benchmarks/interactive.py). A click carries no scale, so it is refined inside a window of
CLICK_WINDOW of the shorter image side; a rough box is the better hint for large objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from backend.labelstudio.boxes import PixelBox, clip_box

MAX_SIDE = 160
ITERATIONS = 3
BOX_MARGIN = 0.15  # context around a rough box: GrabCut learns the background from it
CLICK_WINDOW = 0.35
CLICK_RADIUS = 3  # pixels of the scaled crop marked as sure foreground around a click
MIN_CROP = 8

Point = tuple[float, float]


def _crop(image: np.ndarray, x1: float, y1: float, x2: float,
          y2: float) -> tuple[np.ndarray, int, int, float] | None:
    """The image's [x1, x2) x [y1, y2) clipped, scaled to MAX_SIDE: (crop, left, top, scale)."""
    import cv2

    height, width = image.shape[:2]
    left, top = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
    right, bottom = min(width, int(np.ceil(x2))), min(height, int(np.ceil(y2)))
    if right - left < MIN_CROP or bottom - top < MIN_CROP:
        return None
    crop = image[top:bottom, left:right]
    scale = min(1.0, MAX_SIDE / max(crop.shape[:2]))
    if scale < 1.0:
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(crop), left, top, scale


def _component_box(foreground: np.ndarray, seed: tuple[int, int] | None) -> tuple[int, ...] | None:
    """(x1, y1, x2, y2) of the foreground component holding `seed` (x, y), else the largest."""
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground.astype(np.uint8),
                                                              connectivity=8)
    if count <= 1:
        return None
    chosen = 0
    if seed is not None:
        chosen = int(labels[seed[1], seed[0]])
    if chosen == 0:
        chosen = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[chosen, :4])
    return x, y, x + w, y + h


def _run(crop: np.ndarray, mask: np.ndarray, rect: tuple[int, int, int, int] | None,
         iterations: int) -> np.ndarray:
    """GrabCut's foreground (sure or probable) after `iterations`."""
    import cv2

    background, foreground = np.zeros((1, 65)), np.zeros((1, 65))
    if rect is not None:
        cv2.grabCut(crop, mask, rect, background, foreground, iterations, cv2.GC_INIT_WITH_RECT)
    else:  # the rectangle is ignored in mask mode
        cv2.grabCut(crop, mask, (0, 0, 0, 0), background, foreground, iterations,
                    cv2.GC_INIT_WITH_MASK)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def _to_image(box: tuple[int, ...], left: int, top: int, scale: float, width: int,
              height: int) -> PixelBox | None:
    x1, y1, x2, y2 = box
    return clip_box((left + x1 / scale, top + y1 / scale, left + x2 / scale, top + y2 / scale),
                    width, height)


def refine_box(image: np.ndarray, box: Sequence[float],
               iterations: int = ITERATIONS) -> PixelBox | None:
    """The tight box of the object GrabCut finds inside a rough xyxy pixel `box`, or None.

    `image` is RGB uint8 [H, W, 3].
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = BOX_MARGIN * (x2 - x1), BOX_MARGIN * (y2 - y1)
    found = _crop(image, x1 - mx, y1 - my, x2 + mx, y2 + my)
    if found is None:
        return None
    crop, left, top, scale = found
    rect_x, rect_y = max(0, int((x1 - left) * scale)), max(0, int((y1 - top) * scale))
    rect_w = min(crop.shape[1] - rect_x, max(1, int(round((x2 - x1) * scale))))
    rect_h = min(crop.shape[0] - rect_y, max(1, int(round((y2 - y1) * scale))))
    if rect_w < 2 or rect_h < 2 or (rect_w >= crop.shape[1] and rect_h >= crop.shape[0]):
        return None  # GrabCut needs some background outside the rectangle to learn from
    mask = np.zeros(crop.shape[:2], np.uint8)
    foreground = _run(crop, mask, (rect_x, rect_y, rect_w, rect_h), iterations)
    component = _component_box(foreground, None)
    if component is None:
        return None
    return _to_image(component, left, top, scale, image.shape[1], image.shape[0])


def _click_mask(shape: tuple[int, ...], positives: list[tuple[int, int]],
                negatives: list[tuple[int, int]]) -> np.ndarray:
    import cv2

    height, width = shape[:2]
    mask = np.full((height, width), cv2.GC_PR_BGD, np.uint8)
    inner_x, inner_y = width // 5, height // 5
    mask[inner_y:height - inner_y, inner_x:width - inner_x] = cv2.GC_PR_FGD
    mask[0, :] = mask[-1, :] = cv2.GC_BGD
    mask[:, 0] = mask[:, -1] = cv2.GC_BGD
    for x, y in negatives:
        cv2.circle(mask, (x, y), CLICK_RADIUS, int(cv2.GC_BGD), -1)
    for x, y in positives:
        cv2.circle(mask, (x, y), CLICK_RADIUS, int(cv2.GC_FGD), -1)
    return mask


def refine_click(image: np.ndarray, positives: Sequence[Point], negatives: Sequence[Point] = (),
                 iterations: int = ITERATIONS) -> PixelBox | None:
    """The box of the object GrabCut finds under the first positive click, or None.

    Points are (x, y) pixels; negative clicks are marked as sure background.
    """
    if not positives:
        return None
    height, width = image.shape[:2]
    half = CLICK_WINDOW * min(width, height) / 2
    cx, cy = (float(v) for v in positives[0])
    found = _crop(image, cx - half, cy - half, cx + half, cy + half)
    if found is None:
        return None
    crop, left, top, scale = found

    def local(points: Sequence[Point]) -> list[tuple[int, int]]:
        inside = []
        for x, y in points:
            px, py = int((x - left) * scale), int((y - top) * scale)
            if 0 <= px < crop.shape[1] and 0 <= py < crop.shape[0]:
                inside.append((px, py))
        return inside

    seeds = local(positives)
    if not seeds:
        return None
    foreground = _run(crop, _click_mask(crop.shape, seeds, local(negatives)), None, iterations)
    component = _component_box(foreground, seeds[0])
    if component is None:
        return None
    return _to_image(component, left, top, scale, width, height)
