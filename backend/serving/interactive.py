"""Interactive annotation: one box from the user's click or rough box (Label Studio's smart tools).

When a region of a tag with `smart="true"` is finished, Label Studio's editor posts
`{task, context: {result: [regions]}}` to `/api/ml/{id}/interactive-annotating`; Label Studio
forwards it as a one-task `/predict` with the context in `params.context`, waits up to
ML_TIMEOUT_PREDICT (100 s) and shows `results[0].result` as suggestions. The regions are the
editor's serialized ones: `type` keypointlabels (value x, y, width) or rectanglelabels (value x,
y, width, height, rotation), all in percent of the image, the chosen label under
`value[type]`, and `is_positive` on smart regions (false for a negative click).

The champion's detections near the hint come first, of any class and at a low score (the user
is pointing at an object); when none fits, GrabCut refines the hint (`refine.py`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from backend.core.errors import BadRequest, ImageError, MLAssistError
from backend.labelstudio.boxes import PixelBox, from_region_value, to_region
from backend.labelstudio.label_config import BoxTarget, LabelConfig, map_classes
from backend.media.images import ImageFetcher, LoadedImage
from backend.model.detector import Detections, Detector
from backend.serving.champions import ChampionServing
from backend.serving.refine import refine_box, refine_click

logger = logging.getLogger(__name__)

HINT_TYPES = ("keypointlabels", "rectanglelabels")
MIN_IOU = 0.3  # a rough box is rough: below this it is not pointing at the detection
CONFIDENT_SHARE = 0.5  # of a click's containing boxes, the smallest scoring this share of the best
CACHED_TASKS = 4


@dataclass(frozen=True)
class Hint:
    """What the user pointed at, in fractions of the image (0..1), so any decoded size fits."""

    to_name: str
    from_name: str
    label: str | None
    positives: tuple[tuple[float, float], ...] = ()
    negatives: tuple[tuple[float, float], ...] = ()
    box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2

    def box_pixels(self, width: int, height: int) -> tuple[float, float, float, float] | None:
        if self.box is None:
            return None
        x1, y1, x2, y2 = self.box
        return x1 * width, y1 * height, x2 * width, y2 * height

    def points_pixels(self, points: Sequence[tuple[float, float]], width: int,
                      height: int) -> list[tuple[float, float]]:
        return [(x * width, y * height) for x, y in points]


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"interactive context: {what} must be a finite number")
    return float(value)


def _label(value: dict, kind: str) -> str | None:
    labels = value.get(kind) or value.get("labels")
    if isinstance(labels, list) and labels and isinstance(labels[0], str):
        return labels[0]
    return None


def parse_hint(context: object) -> Hint | None:
    """The hint in a `/predict` context; None when there is no smart-tool region in it.

    Raises BadRequest when the context or one of its regions is malformed.
    """
    if not isinstance(context, dict):
        raise BadRequest("`params.context` must be an object with a `result` list")
    regions = context.get("result")
    if regions is None:
        return None
    if not isinstance(regions, list):
        raise BadRequest("`params.context.result` must be a list of Label Studio regions")
    positives: list[tuple[float, float]] = []
    negatives: list[tuple[float, float]] = []
    box: tuple[float, float, float, float] | None = None
    first: tuple[str, str, str | None] | None = None
    for region in regions:
        if not isinstance(region, dict) or not isinstance(region.get("value"), dict):
            raise BadRequest("each region of `params.context.result` must be an object with "
                             "a `value` object")
        kind, value = region.get("type"), region["value"]
        if kind not in HINT_TYPES:
            continue  # another smart tool (brush, polygon): not ours to answer
        to_name, from_name = region.get("to_name"), region.get("from_name")
        if not isinstance(to_name, str) or not isinstance(from_name, str):
            raise BadRequest("a context region needs string `from_name` and `to_name`")
        x = _number(value.get("x"), f"{kind} value.x")
        y = _number(value.get("y"), f"{kind} value.y")
        positive = region.get("is_positive", True) is not False
        if kind == "keypointlabels":
            (positives if positive else negatives).append((x / 100.0, y / 100.0))
        elif positive:
            pixels = from_region_value(value, 10_000, 10_000)  # fractions, rotation resolved
            if pixels is None:
                raise BadRequest("a rectanglelabels context region needs a non-empty box "
                                 "(value.x, y, width, height in percent)")
            box = (pixels.x1 / 1e4, pixels.y1 / 1e4, pixels.x2 / 1e4, pixels.y2 / 1e4)
        if first is None or (kind == "rectanglelabels" and box is not None):
            first = (to_name, from_name, _label(value, kind))
    if first is None or (not positives and box is None):
        return None
    return Hint(first[0], first[1], first[2], tuple(positives), tuple(negatives), box)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two xyxy boxes (0 when either is empty)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def match_box(detections: Detections, box: Sequence[float], min_score: float) -> int | None:
    """Index of the detection overlapping a rough box most (IoU >= MIN_IOU), else None."""
    best, best_iou = None, MIN_IOU
    for index in range(len(detections.scores)):
        score = float(detections.scores[index])
        if not score >= min_score:  # also drops NaN
            continue
        iou = box_iou(detections.boxes[index], box)
        if iou > best_iou or (best is not None and iou == best_iou
                              and score > float(detections.scores[best])):
            best, best_iou = index, iou
    return best


def _contains(box: Sequence[float], point: tuple[float, float]) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def match_click(detections: Detections, positives: Sequence[tuple[float, float]],
                negatives: Sequence[tuple[float, float]], min_score: float) -> int | None:
    """Index of the box a click points at, else None.

    Of the boxes holding every positive click and no negative one, the smallest among those
    scoring at least CONFIDENT_SHARE of the best of them: a click on a wheel picks the wheel
    over the car around it, but not a stray low-score box.
    """
    candidates = []
    for index in range(len(detections.scores)):
        score = float(detections.scores[index])
        box = detections.boxes[index]
        if not score >= min_score:
            continue
        if all(_contains(box, p) for p in positives) and \
                not any(_contains(box, p) for p in negatives):
            area = float((box[2] - box[0]) * (box[3] - box[1]))
            candidates.append((index, score, area))
    if not candidates:
        return None
    best_score = max(score for _, score, _ in candidates)
    confident = [c for c in candidates if c[1] >= CONFIDENT_SHARE * best_score]
    return min(confident, key=lambda c: (c[2], -c[1]))[0]


def target_for(config: LabelConfig, hint: Hint) -> BoxTarget | None:
    """The RectangleLabels target the answer belongs to: the hint's own tag, else the first
    one on the hint's image."""
    on_image = [t for t in config.targets if t.to_name == hint.to_name]
    for target in on_image:
        if target.from_name == hint.from_name:
            return target
    return on_image[0] if on_image else None


def choose_label(target: BoxTarget, hint_label: str | None, detected: str | None) -> str:
    """The label the user chose (matched by name or `predicted_values`), else the detection's
    mapped label, else the tag's first label (a label outside the config is never drawn)."""
    if hint_label is not None:
        mapped = map_classes((hint_label,), target)
        if mapped:
            return mapped[0]
    return detected if detected is not None else target.labels[0].value


@dataclass(frozen=True)
class InteractiveOptions:
    """Knobs of interactive requests, from the settings."""

    time_budget: float = 3.0
    min_score: float = 0.05


@dataclass
class _Seen:
    """A task's decoded image and its detections per model version (repeat clicks are cheap)."""

    image: LoadedImage
    pixels: np.ndarray
    detections: dict[str, Detections]


class InteractiveAnnotator:
    """Answers one task's smart-tool hint with one rectangle region, within a time budget.

    The budget decides what runs: the base model is not waited for when it is still loading,
    and GrabCut runs only when the budget is not spent. A model forward, once started, runs to
    its end; the image download is bounded by IMAGE_FETCH_TIMEOUT and done once per task.
    """

    def __init__(self, fetcher: ImageFetcher, serving: ChampionServing,
                 options: InteractiveOptions) -> None:
        self.fetcher = fetcher
        self.serving = serving
        self.options = options
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[int | None, str], _Seen] = OrderedDict()

    def annotate(self, project: int | None, task: object, config: LabelConfig,
                 hint: Hint) -> dict:
        """The `/predict` result item for one task: `result` holds at most one region."""
        started = time.monotonic()
        deadline = started + self.options.time_budget
        detector = self._detector(project)
        version = detector.version if detector is not None else self.serving.version(project)
        target = target_for(config, hint)
        if target is None:
            return _error(version, "no <RectangleLabels> in the label config points at "
                          f"<Image name=\"{hint.to_name}\">, the smart tool's image", "no_target")
        task_id = task.get("id") if isinstance(task, dict) else None
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or target.data_key not in data:
            return _error(version, f"task has no {target.data_key!r} in its data, which "
                          f"<Image name=\"{hint.to_name}\"> reads", "no_image_key")
        try:
            seen = self._image(task_id if isinstance(task_id, int) else None,
                               data[target.data_key])
        except ImageError as exc:
            return _error(version, f"task {task_id}: image: {exc}", exc.reason)
        region, source = None, "none"
        if detector is not None:
            region = self._from_model(detector, seen, target, hint)
            source = "model" if region is not None else source
        if region is None and time.monotonic() < deadline:
            region = self._from_grabcut(seen, target, hint)
            source = "grabcut" if region is not None else source
        elapsed = time.monotonic() - started
        logger.info("interactive task %s: %s in %.0f ms", task_id, source, 1000 * elapsed)
        return {"result": [region] if region else [],
                "score": region["score"] if region else 0.0,
                "model_version": version, "source": source}

    def _detector(self, project: int | None) -> Detector | None:
        try:  # a loading base model is not waited for: GrabCut answers meanwhile
            return self.serving.detector(project, base_wait=0.0)
        except MLAssistError as exc:
            logger.info("interactive request without a model (%s): GrabCut only", exc)
            return None

    def _image(self, task_id: int | None, reference: object) -> _Seen:
        key = (task_id, str(reference))
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return self._seen[key]
        image = self.fetcher.load(reference, task_id)
        seen = _Seen(image, np.asarray(image.image), {})
        with self._lock:
            self._seen[key] = seen
            while len(self._seen) > CACHED_TASKS:
                self._seen.popitem(last=False)
        return seen

    def _from_model(self, detector: Detector, seen: _Seen, target: BoxTarget,
                    hint: Hint) -> dict | None:
        detections = seen.detections.get(detector.version)
        if detections is None:
            detections = detector.predict([seen.image.image], batch_size=1)[0]
            seen.detections[detector.version] = detections
        width, height = seen.image.width, seen.image.height
        rough = hint.box_pixels(width, height)
        if rough is not None:
            index = match_box(detections, rough, self.options.min_score)
        else:
            index = match_click(detections, hint.points_pixels(hint.positives, width, height),
                                hint.points_pixels(hint.negatives, width, height),
                                self.options.min_score)
        if index is None:
            return None
        detected = map_classes(tuple(detector.class_names), target).get(
            int(detections.labels[index]))
        return _region(detections.boxes[index], float(detections.scores[index]), target,
                       choose_label(target, hint.label, detected), seen.image)

    def _from_grabcut(self, seen: _Seen, target: BoxTarget, hint: Hint) -> dict | None:
        width, height = seen.image.width, seen.image.height
        rough = hint.box_pixels(width, height)
        found: PixelBox | None
        if rough is not None:
            found = refine_box(seen.pixels, rough)
        else:
            found = refine_click(seen.pixels, hint.points_pixels(hint.positives, width, height),
                                 hint.points_pixels(hint.negatives, width, height))
        if found is None:
            return None
        # GrabCut has no confidence: 0 keeps its box last when scores are sorted.
        return _region((found.x1, found.y1, found.x2, found.y2), 0.0, target,
                       choose_label(target, hint.label, None), seen.image)


def _region(box: Sequence[float], score: float, target: BoxTarget, label: str,
            image: LoadedImage) -> dict | None:
    return to_region(box, score=score, label=label, width=image.width, height=image.height,
                     from_name=target.from_name, to_name=target.to_name,
                     region_id=uuid.uuid4().hex[:10])  # unique: accepted ones stay


def _error(version: str, message: str, reason: str) -> dict:
    # As in /predict: no `result` key. Label Studio's editor then shows no suggestion.
    logger.warning("interactive request: %s", message)
    return {"error": message, "reason": reason, "model_version": version, "score": 0.0}
