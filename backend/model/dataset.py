"""Training data from Label Studio: annotations to torchvision targets, the frozen split, images.

Which annotation counts for a task: a ground-truth annotation if there is one (the latest),
else the latest non-cancelled one; skipped (cancelled) annotations never count. An annotation
with no boxes is a valid negative image. Regions with labels the config does not know, and
malformed regions, are skipped and counted; a task whose image cannot be loaded is skipped and
counted.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend.core.errors import ImageError
from backend.labelstudio.boxes import from_region_value
from backend.labelstudio.label_config import LabelConfig
from backend.media.images import ImageFetcher, LoadedImage, decode_image
from backend.model.checkpoint import BACKGROUND

logger = logging.getLogger(__name__)

VALIDATION_BUCKETS = 10_000


def class_names_for(config: LabelConfig) -> list[str]:
    """The model's classes for a project: background, then every box label in config order."""
    names = [BACKGROUND]
    for target in config.targets:
        for value in target.label_values:
            if value not in names:
                names.append(value)
    return names


def split_rank(task_id: int) -> int:
    """A task's fixed place in the split order: a hash of its id in [0, VALIDATION_BUCKETS)."""
    digest = hashlib.sha256(f"mlassist-split:{task_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % VALIDATION_BUCKETS


def is_validation(task_id: int, fraction: float) -> bool:
    """Whether a task belongs to the validation split: a pure function of its id, so a task
    never moves between train and validation as labels grow."""
    return split_rank(task_id) < fraction * VALIDATION_BUCKETS


def hold_out_at_least(samples: Sequence[Sample], minimum: int) -> int:
    """Top the validation split up to `minimum` tasks (keeping one for training): when the
    hash split of a small label set holds out too few, the training tasks nearest the line
    (lowest split rank) are held out too, so the rank order, not chance, decides. Once the
    hash split alone reaches `minimum`, this changes nothing. Returns how many were added."""
    held = {s.task_id for s in samples if s.validation}
    training = sorted({s.task_id for s in samples if not s.validation}, key=split_rank)
    extra = set(training[:max(0, min(minimum - len(held), len(training) - 1))])
    for sample in samples:
        if sample.task_id in extra:
            sample.validation = True
    return len(extra)


def chosen_annotation(task: dict) -> dict | None:
    """The annotation that counts for a task (see module doc), or None."""
    annotations = [a for a in task.get("annotations") or []
                   if isinstance(a, dict) and not a.get("was_cancelled")
                   and isinstance(a.get("result"), list)]
    if not annotations:
        return None
    ground_truth = [a for a in annotations if a.get("ground_truth")]
    pool = ground_truth or annotations
    return max(pool, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""),
                                    int(a.get("id") or 0)))


@dataclass
class Sample:
    """One labeled image: where it comes from and its boxes in pixels of the shown image."""

    task_id: int
    data_key: str
    reference: str
    boxes: np.ndarray  # float32 [N, 4] xyxy
    labels: np.ndarray  # int64 [N], indices into the class names
    validation: bool
    annotation_id: int | None = None
    regions: list[tuple[dict, int]] = field(default_factory=list)  # LS values + class index


@dataclass
class DatasetReport:
    """What reading the labels found, counted (nothing here is fatal)."""

    tasks_seen: int = 0
    tasks_labeled: int = 0
    negatives: int = 0
    boxes: int = 0
    skipped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"tasks_seen": self.tasks_seen, "tasks_labeled": self.tasks_labeled,
                "negatives": self.negatives, "boxes": self.boxes,
                "skipped": dict(self.skipped)}


def samples_from_tasks(tasks: Iterable[dict], config: LabelConfig, class_names: Sequence[str],
                       validation_fraction: float,
                       report: DatasetReport | None = None) -> list[Sample]:
    """One sample per labeled image; boxes stay in percent until the image size is known."""
    report = report if report is not None else DatasetReport()
    index = {name: i for i, name in enumerate(class_names)}
    samples: list[Sample] = []
    for task in tasks:
        report.tasks_seen += 1
        task_id = task.get("id")
        data = task.get("data") or {}
        annotation = chosen_annotation(task)
        if annotation is None or not isinstance(task_id, int):
            continue
        report.tasks_labeled += 1
        for target_key in config.data_keys:
            reference = data.get(target_key)
            if not isinstance(reference, str):
                report.skipped["no_image_key"] += 1
                continue
            to_names = {t.to_name for t in config.targets if t.data_key == target_key}
            from_names = {t.from_name for t in config.targets if t.data_key == target_key}
            regions: list[tuple[dict, int]] = []
            for region in annotation["result"]:
                if not isinstance(region, dict) or region.get("type") != "rectanglelabels":
                    continue
                if region.get("from_name") not in from_names or \
                        region.get("to_name") not in to_names:
                    continue
                value = region.get("value")
                labels = value.get("rectanglelabels") if isinstance(value, dict) else None
                if not isinstance(value, dict) or not labels or not isinstance(labels, list):
                    report.skipped["malformed_region"] += 1
                    continue
                if not isinstance(labels[0], str) or labels[0] not in index \
                        or labels[0] == BACKGROUND:
                    report.skipped["unknown_label"] += 1
                    continue
                regions.append((value, index[labels[0]]))
            samples.append(Sample(task_id, target_key, reference,
                                  np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                                  is_validation(task_id, validation_fraction),
                                  annotation.get("id"), regions))
    return samples


def resolve_boxes(sample: Sample, image: LoadedImage, report: DatasetReport) -> None:
    """Convert the sample's percent regions to pixel boxes of the loaded image."""
    boxes, labels = [], []
    for value, label in sample.regions:
        box = from_region_value(value, image.width, image.height)
        if box is None:
            report.skipped["degenerate_box"] += 1
            continue
        boxes.append((box.x1, box.y1, box.x2, box.y2))
        labels.append(label)
    sample.boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    sample.labels = np.asarray(labels, np.int64)
    report.boxes += len(boxes)
    if not boxes:
        report.negatives += 1


class ImageCache:
    """Task images on disk, keyed by the task's image reference (a URL or storage URI)."""

    def __init__(self, directory: Path, fetcher: ImageFetcher, max_pixels: int) -> None:
        self.directory = directory
        self.fetcher = fetcher
        self.max_pixels = max_pixels

    def path_for(self, reference: str) -> Path:
        # A Label Studio path ("/data/upload/...") only means something on its server.
        key = reference if "://" in reference or reference.startswith("data:") \
            else self.fetcher.auth.base_url + reference
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.directory / digest[:2] / digest

    def load(self, reference: str, task_id: int) -> LoadedImage:
        path = self.path_for(reference)
        if path.exists():
            return decode_image(path.read_bytes(), self.max_pixels)
        data = self.fetcher.fetch(reference, task_id)
        image = decode_image(data, self.max_pixels)  # only cache what decodes
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        return image


def load_samples(samples: list[Sample], cache: ImageCache,
                 report: DatasetReport) -> list[tuple[Sample, LoadedImage]]:
    """Load every sample's image (through the cache) and resolve its boxes; skip failures."""
    loaded = []
    for sample in samples:
        try:
            image = cache.load(sample.reference, sample.task_id)
        except ImageError as exc:
            report.skipped[f"image_{exc.reason}"] += 1
            logger.warning("task %s: image skipped: %s", sample.task_id, exc)
            continue
        resolve_boxes(sample, image, report)
        loaded.append((sample, image))
    return loaded
