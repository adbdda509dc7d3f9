"""Turning Label Studio tasks into box predictions.

Per-task failures never fail the batch. Label Studio stores every item that has a `result` key
and skips (and logs) items without one, so a task whose image failed, or that the time budget
did not reach, gets `{"error": ..., "model_version": ...}` without `result`: nothing is stored,
and Label Studio asks again next time, instead of an empty prediction of this version that
would stop it from ever asking (see LABEL_STUDIO_FACTS.md).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import ImageOps

from backend.core.errors import ImageError
from backend.labelstudio.boxes import task_score, to_region
from backend.labelstudio.label_config import BoxTarget, LabelConfig, map_classes
from backend.media.images import ImageFetcher, LoadedImage, decode_image
from backend.model.detector import Detections, Detector
from backend.serving import ordering

logger = logging.getLogger(__name__)

FETCH_THREADS = 8


@dataclass(frozen=True)
class PredictOptions:
    """Knobs of one prediction run, from the settings."""

    score_threshold: float = 0.5
    max_boxes: int = 100
    batch_size: int = 4
    time_budget: float = 80.0
    show_uncalibrated: bool = False
    order: ordering.OrderOptions | None = None  # None: the score is the mean box score


@dataclass
class _TaskWork:
    index: int
    task_id: int | None
    images: dict[str, LoadedImage]
    error: str | None = None
    reason: str | None = None


def _task_id(task: object) -> int | None:
    if isinstance(task, dict):
        task_id = task.get("id")
        if isinstance(task_id, int) and not isinstance(task_id, bool):
            return task_id
    return None


def regions_for(detections: Detections, target: BoxTarget, class_map: dict[int, str],
                image: LoadedImage, thresholds: Callable[[int], float | None],
                max_boxes: int) -> list[dict]:
    """Label Studio regions for one image and one RectangleLabels target.

    `thresholds(class_index)` is the minimum score for that class, or None to drop it.
    """
    regions: list[dict] = []
    order = np.argsort(-detections.scores, kind="stable")
    for idx in order:
        score = float(detections.scores[idx])
        if not math.isfinite(score):
            continue  # NaN is not JSON: Label Studio would reject the whole response
        class_index = int(detections.labels[idx])
        label = class_map.get(class_index)
        threshold = thresholds(class_index)
        if label is None or threshold is None or score < threshold:
            continue
        region = to_region(detections.boxes[idx], score=score, label=label,
                           width=image.width, height=image.height,
                           from_name=target.from_name, to_name=target.to_name,
                           region_id=f"{target.from_name}-{target.to_name}-{len(regions)}")
        if region is not None:
            regions.append(region)
            if len(regions) >= max_boxes:
                break
    return regions


def threshold_rule(detector: Detector, target: BoxTarget,
                   options: PredictOptions) -> Callable[[int], float | None]:
    """Which score a box of each class needs: the tag's `model_score_threshold` if set, else
    the version's calibrated threshold (None = the class cannot reach the target precision:
    hidden unless PRELABEL_UNCALIBRATED=show), else SCORE_THRESHOLD."""
    if target.score_threshold is not None:
        fixed = target.score_threshold
        return lambda index: fixed
    calibrated = getattr(detector, "thresholds", None)
    if calibrated is None:
        return lambda index: options.score_threshold
    names = detector.class_names
    fallback = options.score_threshold if options.show_uncalibrated else None

    def rule(index: int) -> float | None:
        if not 0 <= index < len(names):
            return None
        found = calibrated.get(names[index])
        return fallback if found is None else float(found)

    return rule


@lru_cache(maxsize=256)
def _class_map(class_names: tuple[str, ...], target: BoxTarget) -> dict[int, str]:
    return map_classes(class_names, target)


def _signals(detector: Detector, order: ordering.OrderOptions, work: _TaskWork,
             detections: dict[str, Detections],
             flipped: Detections | None) -> ordering.TaskSignals:
    """The ordering signals of a task's first image (raw detections, before thresholds)."""
    key = next(iter(work.images))
    found = detections[key]
    flip = 0.0
    if flipped is not None:
        flip = ordering.flip_instability(
            found.boxes, found.scores, found.labels,
            ordering.unflip(flipped.boxes, work.images[key].width), flipped.scores,
            flipped.labels)
    return ordering.task_signals(found.scores, found.labels,
                                 order.class_weights(detector.class_names),
                                 order.weights.floor, flip)


class Predictor:
    """Fetches task images, runs the detector in batches, and builds Label Studio results."""

    def __init__(self, fetcher: ImageFetcher, options: PredictOptions,
                 on_task_error: Callable[[str], None] | None = None,
                 on_stage: Callable[[str, float], None] | None = None) -> None:
        self.fetcher = fetcher
        self.options = options
        self._on_task_error = on_task_error or (lambda reason: None)
        # Seconds spent per stage (fetch, decode, forward, results): where /predict's time goes.
        self._on_stage = on_stage or (lambda stage, seconds: None)
        self._pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="image-fetch")

    def predict(self, detector: Detector, tasks: list, config: LabelConfig) -> list[dict]:
        """One item per task, in order."""
        deadline = time.monotonic() + self.options.time_budget
        items: list[dict] = [{} for _ in tasks]
        # One forward batch per chunk: while a chunk is inferred, the next one is fetched and
        # decoded, so only the first chunk's download is not hidden behind the model.
        size = max(1, self.options.batch_size)
        chunks = [range(start, min(start + size, len(tasks)))
                  for start in range(0, len(tasks), size)]
        for works in self._prefetched(tasks, config, chunks, deadline):
            over_budget = time.monotonic() > deadline
            for work in works:
                if over_budget and work.error is None:
                    work.error = (f"not predicted within PREDICT_TIME_BUDGET "
                                  f"({self.options.time_budget:g} s); ask again for the rest")
                    work.reason = "time_budget"
            ready = [work for work in works if work.error is None]
            started = time.perf_counter()
            detections, flipped = self._detect(detector, ready, config)
            formatted = time.perf_counter()
            for work in works:
                if work.error is not None:
                    items[work.index] = self._error_item(detector, work)
                else:
                    items[work.index] = self._result_item(detector, work, config,
                                                          detections[work.index],
                                                          flipped.get(work.index))
            self._on_stage("forward", formatted - started)
            self._on_stage("results", time.perf_counter() - formatted)
        if self.options.order is not None:
            ordering.apply_priorities(items, self.options.order.weights)
        return items

    def _load(self, value: object, task_id: int | None) -> LoadedImage:
        started = time.perf_counter()
        data = self.fetcher.fetch(value, task_id)
        fetched = time.perf_counter()
        self._on_stage("fetch", fetched - started)
        loaded = decode_image(data, self.fetcher.max_pixels)
        self._on_stage("decode", time.perf_counter() - fetched)
        return loaded

    def _prefetched(self, tasks: list, config: LabelConfig, chunks: list[range],
                    deadline: float) -> Iterator[list[_TaskWork]]:
        """Yield chunks of fetched images, fetching the next chunk while one is inferred."""
        upcoming = self._submit(tasks, config, chunks[0], deadline) if chunks else []
        for i in range(len(chunks)):
            current = upcoming
            if i + 1 < len(chunks):
                upcoming = self._submit(tasks, config, chunks[i + 1], deadline)
            yield [self._collect(work, futures, deadline) for work, futures in current]

    def _submit(self, tasks: list, config: LabelConfig, chunk: range,
                deadline: float) -> list[tuple[_TaskWork, dict[str, Future]]]:
        submitted = []
        for index in chunk:
            task = tasks[index]
            work = _TaskWork(index, _task_id(task), {})
            futures: dict[str, Future] = {}
            data = task.get("data") if isinstance(task, dict) else None
            if time.monotonic() > deadline:
                work.error, work.reason = "not reached within PREDICT_TIME_BUDGET", "time_budget"
            elif not isinstance(data, dict):
                work.error, work.reason = "task has no `data` object", "bad_task"
            else:
                missing = [key for key in config.data_keys if key not in data]
                if len(missing) == len(config.data_keys):
                    work.error = (f"task has no {' or '.join(repr(k) for k in missing)} in its "
                                  "data, which the label config's <Image> reads")
                    work.reason = "no_image_key"
                for key in config.data_keys:
                    if key in data:
                        futures[key] = self._pool.submit(self._load, data[key], work.task_id)
            submitted.append((work, futures))
        return submitted

    def _collect(self, work: _TaskWork, futures: dict[str, Future],
                 deadline: float) -> _TaskWork:
        for key, future in futures.items():
            try:
                work.images[key] = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except ImageError as exc:
                work.error = work.error or f"image {key!r}: {exc}"
                work.reason = work.reason or exc.reason
            except TimeoutError:
                future.cancel()
                work.error = work.error or (f"image {key!r} not fetched within "
                                            "PREDICT_TIME_BUDGET")
                work.reason = work.reason or "time_budget"
            except Exception:  # noqa: BLE001 - one task's surprise must not fail the batch
                logger.exception("task %s: unexpected error loading image %r",
                                 work.task_id, key)
                work.error = work.error or f"image {key!r}: internal error; see the server log"
                work.reason = work.reason or "internal"
        return work

    def _detect(self, detector: Detector, works: list[_TaskWork], config: LabelConfig
                ) -> tuple[dict[int, dict[str, Detections]], dict[int, Detections]]:
        """Detections per task and image key, and (ORDER_WEIGHT_FLIP > 0) those of each
        task's first image mirrored."""
        keyed = [(work.index, key, image) for work in works
                 for key, image in work.images.items()]
        outputs = detector.predict([image.image for _, _, image in keyed],
                                   batch_size=self.options.batch_size)
        detections: dict[int, dict[str, Detections]] = {}
        for (index, key, _), output in zip(keyed, outputs, strict=True):
            detections.setdefault(index, {})[key] = output
        flipped: dict[int, Detections] = {}
        order = self.options.order
        if order is not None and order.weights.flip > 0:
            firsts = {work.index: next(iter(work.images.values())) for work in works
                      if work.images}
            mirrored = detector.predict([ImageOps.mirror(image.image)
                                         for image in firsts.values()],
                                        batch_size=self.options.batch_size)
            flipped = dict(zip(firsts, mirrored, strict=True))
        return detections, flipped

    def _result_item(self, detector: Detector, work: _TaskWork, config: LabelConfig,
                     detections: dict[str, Detections],
                     flipped: Detections | None = None) -> dict:
        regions: list[dict] = []
        for target in config.targets:
            if target.data_key not in detections:
                continue
            regions.extend(regions_for(detections[target.data_key], target,
                                       _class_map(tuple(detector.class_names), target),
                                       work.images[target.data_key],
                                       threshold_rule(detector, target, self.options),
                                       self.options.max_boxes))
        item = {
            "result": regions,
            "score": task_score([region["score"] for region in regions]),
            "model_version": detector.version,
        }
        if self.options.order is not None and detections:
            item["signals"] = _signals(detector, self.options.order, work, detections, flipped)
        return item

    def _error_item(self, detector: Detector, work: _TaskWork) -> dict:
        reason = work.reason or "error"
        self._on_task_error(reason)
        logger.warning("task %s: no prediction: %s", work.task_id, work.error)
        return {"error": f"task {work.task_id}: {work.error}", "reason": reason,
                "model_version": detector.version, "score": 0.0}
