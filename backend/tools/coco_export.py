"""COCO export of a Label Studio project's boxes.

One image per labeled task (and image key), one annotation per box of the annotation that
counts for the task (the same choice training makes), boxes in pixels `[x, y, w, h]`,
categories from the label config. Each annotation says where it came from, under `mlassist`
(backend/tools/provenance.py): drawn, accepted or edited, with the model version of that
pre-label and the annotator. Tasks are read in keyset-paged batches and written as they come,
so memory stays flat for 100k+ annotations.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlsplit

from backend.core.errors import ImageError, MLAssistError
from backend.core.files import atomic_file
from backend.labelstudio.boxes import from_region_value
from backend.labelstudio.client import LabelStudioAPI
from backend.labelstudio.label_config import LabelConfig, parse_label_config
from backend.media.images import ImageFetcher, decode_image, redact_url
from backend.model.dataset import chosen_annotation
from backend.tools.provenance import labeled_tasks, region_provenance

logger = logging.getLogger(__name__)

KEY = "mlassist_coco"  # task data field: the COCO file_name a task was imported from


class CocoError(MLAssistError):
    """A COCO file or a project that cannot be exported or imported; the message says why."""


@dataclass
class ExportReport:
    images: int = 0
    annotations: int = 0
    provenance: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    downloaded: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "annotations": self.annotations,
                "provenance": dict(self.provenance), "skipped": dict(self.skipped),
                "downloaded": self.downloaded}


def safe_name(name: object) -> str | None:
    """`name` when it is a relative path that stays inside its folder, else None."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        return None
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("..", "") for part in name.split("/")):
        return None
    return name


def _file_name(task: dict, key: str, reference: str) -> str:
    chosen = _raw_file_name(task, key, reference)
    if safe_name(chosen) is not None:
        return chosen
    base = PurePosixPath(chosen.replace("\\", "/")).name  # never outside --images-dir
    return f"task-{task.get('id')}-{base if base not in ('', '..', '.') else key}"


def _raw_file_name(task: dict, key: str, reference: str) -> str:
    imported = (task.get("data") or {}).get(KEY)
    if isinstance(imported, str) and imported:
        return imported  # the name it had in the COCO file it came from
    blob = (task.get("data") or {}).get("mlassist_blob")
    if isinstance(blob, str) and "/" in blob:
        return blob.split("/", 1)[1]
    parts = urlsplit(reference)
    if reference.startswith("data:"):
        return f"task-{task['id']}-{key}.png"
    local = parse_qs(parts.query).get("d")
    name = PurePosixPath(local[0] if local else parts.path).name
    return name or f"task-{task['id']}-{key}"


def _image_size(regions: list[dict]) -> tuple[int, int] | None:
    for region in regions:
        width, height = region.get("original_width"), region.get("original_height")
        if isinstance(width, int | float) and isinstance(height, int | float) \
                and width > 0 and height > 0:
            return int(width), int(height)
    return None


def export_coco(api: LabelStudioAPI, fetcher: ImageFetcher, project: int, out: Path,
                images_dir: Path | None = None, page: int = 500) -> ExportReport:
    """Write the project's labeled boxes to `out` as COCO; optionally download the images."""
    record = api.project(project)
    config = parse_label_config(record.get("label_config") or "")
    names: list[str] = []
    for target in config.targets:
        names += [v for v in target.label_values if v not in names]
    category = {name: index + 1 for index, name in enumerate(names)}
    users = {u.get("id"): u.get("email") or u.get("username") for u in api.users()}
    report = ExportReport()
    used_names: set[str] = set()
    header = {"info": {"description": f"Label Studio project {project} "
                                      f"({record.get('title', '')}), exported by MLAssist",
                       "date_created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "version": "1.0"},
              "licenses": [],
              "categories": [{"id": i, "name": n, "supercategory": ""}
                             for n, i in category.items()]}
    with atomic_file(out) as handle, tempfile.TemporaryFile(dir=out.parent) as spool:
        head = json.dumps(header)[:-1]  # the object, still open
        handle.write(f'{head}, "images": ['.encode())
        first_image = True
        for task in labeled_tasks(api, project, page):
            annotation = chosen_annotation(task)
            if annotation is None:
                report.skipped["no_annotation"] += 1
                continue
            predictions = [p for p in task.get("predictions") or [] if isinstance(p, dict)]
            parent = annotation.get("parent_prediction")
            if parent:
                predictions = [p for p in predictions if p.get("id") == parent] or predictions
            for target_key in config.data_keys:
                image = _export_image(task, target_key, annotation, predictions, config,
                                      category, users, fetcher, images_dir, used_names,
                                      report, spool)
                if image is None:
                    continue
                handle.write((b"" if first_image else b", ") + json.dumps(image).encode())
                first_image = False
        handle.write(b'], "annotations": [')
        spool.seek(0)
        shutil.copyfileobj(spool, handle)
        handle.write(b"]}")
    logger.info("project %s: exported %d images, %d boxes (%s) to %s", project,
                report.images, report.annotations, dict(report.provenance), out)
    return report


def _export_image(task: dict, key: str, annotation: dict, predictions: list[dict],
                  config: LabelConfig, category: dict[str, int], users: dict, fetcher: ImageFetcher,
                  images_dir: Path | None, used_names: set[str], report: ExportReport,
                  spool: BinaryIO) -> dict | None:
    reference = (task.get("data") or {}).get(key)
    if not isinstance(reference, str):
        report.skipped["no_image_key"] += 1
        return None
    targets = [t for t in config.targets if t.data_key == key]
    names = {(t.from_name, t.to_name) for t in targets}
    regions = [r for r in annotation.get("result") or [] if isinstance(r, dict)
               and r.get("type") == "rectanglelabels"
               and (r.get("from_name"), r.get("to_name")) in names]
    file_name = _file_name(task, key, reference)
    if file_name in used_names:
        file_name = f"{task['id']}-{file_name}"
    used_names.add(file_name)
    size = _image_size(regions)
    if size is None or images_dir is not None:
        try:
            data = fetcher.fetch(reference, int(task["id"]))
            loaded = decode_image(data, fetcher.max_pixels)
        except ImageError as exc:
            report.skipped["image_unreadable"] += 1
            logger.warning("task %s: %s; exported without it", task.get("id"), exc)
            return None
        size = size or (loaded.width, loaded.height)
        if images_dir is not None:
            target = images_dir / file_name
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                report.downloaded += 1
    width, height = size
    image_id = report.images + 1
    report.images += 1
    annotator = users.get(annotation.get("completed_by"), annotation.get("completed_by"))
    for region in regions:
        value = region.get("value") or {}
        labels = value.get("rectanglelabels") or []
        if not labels or labels[0] not in category:
            report.skipped["unknown_label"] += 1
            continue
        box = from_region_value(value, width, height)
        if box is None:
            report.skipped["degenerate_box"] += 1
            continue
        provenance, version = region_provenance(region, predictions)
        report.provenance[provenance] += 1
        report.annotations += 1
        bbox = [round(box.x1, 2), round(box.y1, 2), round(box.x2 - box.x1, 2),
                round(box.y2 - box.y1, 2)]
        item = {"id": report.annotations, "image_id": image_id,
                "category_id": category[labels[0]], "bbox": bbox,
                "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0,
                "mlassist": {"provenance": provenance, "model_version": version,
                             "annotator": annotator, "annotation_id": annotation.get("id"),
                             "task_id": task.get("id"), "region_id": region.get("id")}}
        spool.write((b", " if report.annotations > 1 else b"") + json.dumps(item).encode())
    blob = (task.get("data") or {}).get("mlassist_blob")
    shown = redact_url(reference) if reference.startswith(("http://", "https://")) \
        else reference  # no SAS signature or token in a file people pass around
    return {"id": image_id, "width": width, "height": height, "file_name": file_name,
            "mlassist": {"task_id": task.get("id"), "image": shown,
                         **({"blob": blob} if blob else {})}}
