"""One training round: Label Studio labels in, a measured (and maybe promoted) version out.

1. read the project's config and labeled tasks, load images through the cache;
2. split by task id (frozen), refuse to run without enough validation images;
3. start from the champion (same labels), a re-headed champion (labels changed), an ImageNet
   backbone (MODEL_WEIGHTS=imagenet), COCO weights (when in the torch cache) or scratch;
   train a fixed number of steps;
4. evaluate candidate and champion on the same validation set, calibrate per-class thresholds;
5. record the version (promoted or rejected, with the reason) in the registry.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.core.errors import ModelError, NotEnoughLabels
from backend.core.settings import Settings
from backend.labelstudio.client import LabelStudioAPI
from backend.labelstudio.label_config import parse_label_config
from backend.media.images import ImageFetcher
from backend.model.architectures import build_coco_model, build_model, has_coco_weights
from backend.model.backbones import build_imagenet_model
from backend.model.checkpoint import load_checkpoint, save_checkpoint
from backend.model.dataset import (
    DatasetReport,
    ImageCache,
    class_names_for,
    hold_out_at_least,
    load_samples,
    samples_from_tasks,
)
from backend.model.engine import (
    DetectionDataset,
    TrainConfig,
    evaluation_set,
    predict,
    train_steps,
    transfer_weights,
)
from backend.model.evaluation import (
    ImagePrediction,
    ImageTruth,
    Metrics,
    calibrate_thresholds,
    coco_metrics,
    labels_needed,
    precision_recall_at,
    shown_quality,
)
from backend.model.registry import Registry, promotion_decision

logger = logging.getLogger(__name__)

REPORT_THRESHOLDS = (0.3, 0.5, 0.7, 0.9)


@dataclass
class RoundResult:
    """What a training round did."""

    version: str
    promoted: bool
    reason: str
    metrics: dict[str, Any]
    champion_metrics: dict[str, Any] | None
    calibration: dict[str, Any]
    dataset: dict[str, Any]
    started_from: str
    seconds: float
    train_images: int
    val_images: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _starting_model(arch: str, class_names: list[str], registry: Registry, project: int,
                    champion: dict[str, Any] | None,
                    settings: Settings) -> tuple[Any, str, str | None]:
    """(model, where it started from, parent version)."""
    model = build_model(arch, num_classes=len(class_names))
    if champion is not None and champion.get("arch") == arch:
        checkpoint = load_checkpoint(registry.checkpoint_path(project, champion["version"]))
        if list(checkpoint["class_names"]) == class_names:
            model.load_state_dict(checkpoint["state_dict"])
            return model, f"champion {champion['version']}", champion["version"]
        counts = transfer_weights(model, checkpoint["state_dict"])
        return model, (f"champion {champion['version']} re-headed for the new label set "
                       f"({counts['fresh']} tensors fresh)"), champion["version"]
    if settings.model_weights == "imagenet":
        try:
            pretrained, counts = build_imagenet_model(arch, num_classes=len(class_names))
        except ModelError as exc:
            if settings.model_weights_fallback != "none":
                raise
            logger.warning("%s; MODEL_WEIGHTS_FALLBACK=none: training from scratch", exc)
            return model, "scratch (no usable ImageNet weights in the torch cache)", None
        fresh = f", {counts['fresh']} of its tensors fresh" if counts["fresh"] else ""
        return pretrained, (f"ImageNet backbone ({counts['loaded']} tensors{fresh}; heads "
                            "fresh)"), None
    if has_coco_weights(arch):
        counts = transfer_weights(model, build_coco_model(arch).state_dict())
        return model, f"COCO weights ({counts['fresh']} head tensors fresh)", None
    return model, "scratch (no champion, no COCO weights in the torch cache)", None


def _remap(predictions: list[ImagePrediction], source: list[str],
           target: list[str]) -> list[ImagePrediction]:
    """Predictions of a model with `source` classes, relabelled into `target` indices."""
    lookup = {i: target.index(name) for i, name in enumerate(source) if name in target and i}
    remapped = []
    for p in predictions:
        keep = np.array([int(label) in lookup for label in p.labels], dtype=bool)
        labels = np.array([lookup[int(label)] for label in p.labels[keep]], dtype=np.int64)
        remapped.append(ImagePrediction(p.boxes[keep], p.scores[keep], labels))
    return remapped


def calibrate(truths: list[ImageTruth], predictions: list[ImagePrediction],
              class_names: list[str], target_precision: float, train_labels: int,
              history: list[dict[str, Any]]) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Per-class thresholds reaching `target_precision` (classes with few validation boxes
    lean on all classes pooled: evaluation.calibrate_thresholds), and for the classes that
    cannot, an estimate of the labels needed (from earlier versions' best precision)."""
    thresholds: dict[str, float | None] = {}
    calibration: dict[str, Any] = {}
    pooled = calibrate_thresholds(truths, predictions, class_names, target_precision)
    for index, name in enumerate(class_names):
        if index == 0:
            continue
        found = pooled[name]
        at = {str(t): dict(zip(("precision", "recall"),
                               precision_recall_at(truths, predictions, index, t), strict=True))
              for t in REPORT_THRESHOLDS}
        entry: dict[str, Any] = {**found, "at_thresholds": at}
        thresholds[name] = found["threshold"]
        if found["threshold"] is None:
            points = [(int(v.get("train_labels") or 0),
                       ((v.get("calibration") or {}).get(name) or {}).get("best_precision"))
                      for v in history]
            points.append((train_labels, found["best_precision"]))
            total = labels_needed(points, target_precision)
            entry["labels_needed"] = None if total is None else max(0, total - train_labels)
            more = entry["labels_needed"]
            entry["note"] = (
                f"{name}: cannot reach precision {target_precision:g} yet; "
                + (f"about {more} more labeled images needed" if more is not None
                   else "need another version to estimate how many more labels"))
        calibration[name] = entry
    return thresholds, calibration


def _champion_metrics(registry: Registry, project: int, champion: dict | None,
                      images: list, truths: list, class_names: list[str],
                      device: str) -> Metrics | None:
    """The champion's metrics on this round's held-out images (None without a champion)."""
    if champion is None or not champion.get("checkpoint"):
        return None
    from backend.model.detector import load_detector_model

    old_model, old_names, _ = load_detector_model(
        registry.checkpoint_path(project, champion["version"]))
    old_predictions = _remap(predict(old_model, images, device), old_names, class_names)
    return coco_metrics(truths, old_predictions, class_names)


def _class_counts(items: list, class_names: list[str]) -> dict[str, int]:
    """Training boxes per class name (the detection order's rare-class bonus reads them)."""
    counts = np.bincount(np.concatenate([np.asarray(sample.labels, np.int64)
                                         for sample, _ in items] or [np.zeros(0, np.int64)]),
                         minlength=len(class_names))
    return {name: int(counts[k]) for k, name in enumerate(class_names) if k > 0}


def round_steps(train_images: int, settings: Settings) -> int:
    """Steps of a round: TRAIN_STEPS, or with TRAIN_EPOCHS that many passes over the training
    images, within TRAIN_MIN_STEPS and TRAIN_STEPS: a round on 400 images gets more steps
    than one on 24 (benchmarks/curves.py: from the ImageNet start at 240 labels, 1,000 steps
    reached test AP50 0.59 against 0.52 with 500; at 30 labels 200 steps lost 0.13)."""
    if settings.train_epochs <= 0:
        return settings.train_steps
    wanted = math.ceil(settings.train_epochs * train_images / settings.train_batch_size)
    return min(settings.train_steps, max(settings.train_min_steps, wanted))


def _round_data(project: int, settings: Settings, api: LabelStudioAPI, fetcher: ImageFetcher
                ) -> tuple[list[str], DatasetReport, list, list]:
    """(class names, what was read, training items, validation items) of a round; raises
    NotEnoughLabels when it cannot run yet."""
    config = parse_label_config(api.project(project)["label_config"])
    class_names = class_names_for(config)
    report = DatasetReport()
    samples = samples_from_tasks(api.labeled_tasks(project), config, class_names,
                                 settings.validation_fraction, report)
    cache = ImageCache(settings.image_cache_dir, fetcher, settings.max_image_pixels)
    loaded = load_samples(samples, cache, report)
    hold_out_at_least([sample for sample, _ in loaded], settings.min_validation_images)
    train_items = [item for item in loaded if not item[0].validation]
    val_items = [item for item in loaded if item[0].validation]
    if len(val_items) < settings.min_validation_images or len(train_items) < 1:
        raise NotEnoughLabels(
            f"project {project}: {len(train_items)} training and {len(val_items)} validation "
            f"images; a round needs at least 1 and {settings.min_validation_images} "
            f"(VALIDATION_FRACTION {settings.validation_fraction:g} of labeled tasks are "
            f"held out); labels read: {report.to_dict()}")
    return class_names, report, train_items, val_items


def train_round(project: int, settings: Settings, api: LabelStudioAPI, fetcher: ImageFetcher,
                registry: Registry, *, steps: int | None = None, device: str = "cpu",
                progress: Callable[[int, int, float], None] | None = None,
                before_commit: Callable[[], None] | None = None,
                labeled_tasks: int | None = None) -> RoundResult:
    """Run one training round for a project; raises NotEnoughLabels when it cannot run yet."""
    started = time.monotonic()
    arch = settings.model_arch
    class_names, report, train_items, val_items = _round_data(project, settings, api, fetcher)

    champion = registry.champion(project)
    model, started_from, parent = _starting_model(arch, class_names, registry, project, champion,
                                                  settings)
    train_config = TrainConfig(steps=steps or round_steps(len(train_items), settings),
                               batch_size=settings.train_batch_size, lr=settings.train_lr,
                               seed=settings.train_seed, device=device)
    logger.info("project %s: training %s from %s on %d images (%d held out), %d steps",
                project, arch, started_from, len(train_items), len(val_items),
                train_config.steps)
    curve = train_steps(model, DetectionDataset(train_items, train=True), train_config, progress)

    images, truths = evaluation_set(val_items)
    predictions = predict(model, images, device)
    metrics = coco_metrics(truths, predictions, class_names)
    champion_metrics = _champion_metrics(registry, project, champion, images, truths,
                                         class_names, device)
    history = registry.versions(project)
    thresholds, calibration = calibrate(truths, predictions, class_names,
                                        settings.target_precision, len(train_items), history)
    shown = shown_quality(truths, predictions, class_names, thresholds)
    promote, reason = promotion_decision(
        metrics.to_dict(), champion_metrics.to_dict() if champion_metrics else None,
        settings.promotion_margin, settings.min_first_ap50, settings.min_first_assist,
        shown["share_correct"])
    if before_commit is not None:
        before_commit()  # e.g. stop if this job lost its project lock meanwhile
    version = registry.reserve_version(project, arch)
    record = {
        "version": version, "arch": arch, "class_names": class_names, "parent": parent,
        "metrics": metrics.to_dict(), "thresholds": thresholds, "calibration": calibration,
        "prelabels_on_validation": shown,
        "train_labels": len(train_items), "val_images": len(val_items),
        "train_class_counts": _class_counts(train_items, class_names),
        "labeled_tasks": labeled_tasks if labeled_tasks is not None else report.tasks_labeled,
        "val_task_ids": sorted({item[0].task_id for item in val_items}),
        # the review scores a task only with a model that did not see it (tools/review.py)
        "train_task_ids": sorted({item[0].task_id for item in train_items}),
        "champion_metrics_same_val": champion_metrics.to_dict() if champion_metrics else None,
        "train_config": train_config.to_dict(), "started_from": started_from,
        "reason": reason, "created_at": time.time(), "loss": curve["loss_every_10_steps"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(Path(tmp) / f"{version}.pt", arch=arch, class_names=class_names,
                               state_dict=model.state_dict(), model_version=version,
                               metrics=metrics.to_dict(), train_config=train_config.to_dict(),
                               extra={"thresholds": thresholds, "train_labels": len(train_items),
                                      "parent": parent, "calibration": calibration})
        entry = registry.add(project, record, path, promote=promote, keep=settings.keep_versions,
                             expected_champion=champion["version"] if champion else None)
    if promote and entry["status"] != "champion":
        promote, reason = False, entry["reason"]
    logger.info("project %s: %s AP50 %.3f AP %.3f: %s (%s)", project, version, metrics.ap50,
                metrics.ap, "promoted" if promote else "rejected", reason)
    return RoundResult(version, promote, reason, metrics.to_dict(),
                       champion_metrics.to_dict() if champion_metrics else None, calibration,
                       report.to_dict(), started_from, round(time.monotonic() - started, 1),
                       len(train_items), len(val_items))
