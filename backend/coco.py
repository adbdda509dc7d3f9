"""COCO export and import of a Label Studio project's boxes.

Export: one image per labeled task (and image key), one annotation per box of the annotation
that counts for the task (the same choice training makes), boxes in pixels `[x, y, w, h]`,
categories from the label config. Each annotation says where it came from, under `mlassist`:
`drawn` by hand, a pre-label `accepted` unchanged, or a pre-label `edited`, with the model
version of that pre-label and the annotator. Label Studio's editor records that itself on each
region (`origin`: manual / prediction / prediction-changed); for annotations made without the
editor (the API), regions are compared with the task's predictions by region id and box.
Tasks are read in keyset-paged batches and written as they come, so memory stays flat for
100k+ annotations.

Import: each COCO image becomes a task (its `file_name` under a URL prefix, or uploaded from a
folder), optionally with its boxes as annotations or as predictions, in batches of one
request each. A task carries its COCO `file_name` in `data.mlassist_coco`, so importing the
same file again adds nothing.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import parse_qs, quote, urlsplit

from backend.boxes import from_region_value, to_region
from backend.errors import ImageError, MLAssistError
from backend.files import atomic_file
from backend.images import ImageFetcher, decode_image, redact_url
from backend.label_config import LabelConfig, parse_label_config
from backend.labelstudio import LabelStudioAPI
from backend.model.dataset import chosen_annotation

logger = logging.getLogger(__name__)

DRAWN, ACCEPTED, EDITED = "drawn", "accepted", "edited"
ORIGINS = {"manual": DRAWN, "prediction": ACCEPTED, "prediction-changed": EDITED}
COORD_TOLERANCE = 1e-3  # percent of the image: a box moved less than this is unchanged
KEY = "mlassist_coco"
IMPORTED_VERSION = "coco-import"


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


# -- export ---------------------------------------------------------------------------------


def same_box(a: dict, b: dict) -> bool:
    keys = ("x", "y", "width", "height")
    try:
        return all(abs(float(a[k]) - float(b[k])) <= COORD_TOLERANCE for k in keys) \
            and float(a.get("rotation") or 0) == float(b.get("rotation") or 0) \
            and list(a.get("rectanglelabels") or []) == list(b.get("rectanglelabels") or [])
    except (KeyError, TypeError, ValueError):
        return False


def region_provenance(region: dict, predictions: list[dict]) -> tuple[str, str | None]:
    """(drawn | accepted | edited, model version of the pre-label it came from)."""
    by_id = {r.get("id"): (r, p.get("model_version")) for p in predictions
             for r in p.get("result") or [] if isinstance(r, dict) and r.get("id")}
    value = region.get("value") or {}
    matched = by_id.get(region.get("id")) if region.get("id") else None
    origin = region.get("origin")
    if origin == "manual":
        return DRAWN, None
    if origin in ORIGINS:
        return ORIGINS[origin], matched[1] if matched else _version_of_only(predictions)
    if matched is not None:
        return (ACCEPTED if same_box(value, matched[0].get("value") or {}) else EDITED), \
            matched[1]
    for prediction in predictions:  # the same box, with an id the editor re-issued
        for other in prediction.get("result") or []:
            if isinstance(other, dict) and same_box(value, other.get("value") or {}):
                return ACCEPTED, prediction.get("model_version")
    return DRAWN, None


def _version_of_only(predictions: list[dict]) -> str | None:
    versions = {p.get("model_version") for p in predictions}
    return versions.pop() if len(versions) == 1 else None


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


def labeled_tasks(api: LabelStudioAPI, project: int, page: int) -> Iterator[dict]:
    after = 0
    while batch := api.labeled_task_page(project, after, page):
        yield from batch
        after = int(batch[-1]["id"])


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


# -- import ---------------------------------------------------------------------------------


@dataclass
class ImportReport:
    images: int = 0
    tasks_created: int = 0
    already_there: int = 0
    boxes: int = 0
    skipped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "tasks_created": self.tasks_created,
                "already_there": self.already_there, "boxes": self.boxes,
                "skipped": dict(self.skipped)}


def read_coco(path: Path) -> dict[str, Any]:
    """A COCO file, checked for what import needs; CocoError says what is wrong."""
    try:
        coco = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CocoError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) \
            or not isinstance(coco.get("categories"), list):
        raise CocoError(f"{path}: a COCO file needs 'images' and 'categories' lists")
    for image in coco["images"]:
        if not isinstance(image, dict) or not isinstance(image.get("file_name"), str) \
                or not isinstance(image.get("id"), int | str):
            raise CocoError(f"{path}: every image needs an id and a file_name: {image!r:.200}")
    return coco


def _regions(annotations: list[dict], categories: dict[Any, str], image: dict, target: Any,
             report: ImportReport, score: bool) -> list[dict]:
    width, height = image.get("width"), image.get("height")
    regions = []
    for item in annotations:
        name = categories.get(item.get("category_id"))
        bbox = item.get("bbox")
        if name is None:
            report.skipped["unknown_category"] += 1
            continue
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, int | float) and math.isfinite(v) for v in bbox)):
            report.skipped["malformed_bbox"] += 1
            continue
        x, y, w, h = bbox
        given = item.get("score", 1.0)
        confidence = float(given) if isinstance(given, int | float) and math.isfinite(given) \
            else 1.0
        region = to_region((x, y, x + w, y + h), score=confidence,
                           label=name, width=int(width), height=int(height),  # type: ignore[arg-type]
                           from_name=target.from_name, to_name=target.to_name,
                           region_id=f"coco-{item.get('id')}")
        if region is None:
            report.skipped["degenerate_box"] += 1
            continue
        if not score:
            region.pop("score")
        regions.append(region)
    return regions


def import_coco(api: LabelStudioAPI, project: int, coco: dict[str, Any], images: str,
                as_what: str | None = None, batch: int = 100) -> ImportReport:
    """Create one task per COCO image not yet in the project; see the module doc."""
    config = parse_label_config(api.project(project).get("label_config") or "")
    if not config.targets:
        raise CocoError(f"project {project} has no <RectangleLabels> on an <Image>; set a "
                        "config first (mlassist connect --labels ...)")
    target = config.targets[0]
    labels = set(target.label_values)
    categories: dict[Any, str] = {c.get("id"): str(c.get("name")) for c in coco["categories"]
                                  if isinstance(c, dict)}
    if as_what and (unknown := sorted(set(categories.values()) - labels)):
        raise CocoError(f"categories {unknown} are not labels of project {project} "
                        f"({sorted(labels)}); add them to the label config first")
    if as_what and any(not isinstance(i.get("width"), int) or not isinstance(i.get("height"), int)
                       or i["width"] <= 0 or i["height"] <= 0 for i in coco["images"]):
        raise CocoError("importing boxes needs every image's width and height")
    per_image: dict[Any, list[dict]] = {}
    for item in coco.get("annotations") or []:
        if isinstance(item, dict):
            per_image.setdefault(item.get("image_id"), []).append(item)
    existing = set()
    after = 0
    while page := api.task_page(project, after, 1000):
        existing |= {(t.get("data") or {}).get(KEY) for t in page}
        after = int(page[-1]["id"])
    report = ImportReport()
    folder = Path(images) if not _is_url_prefix(images) else None
    if folder is not None and not folder.is_dir():
        raise CocoError(f"--images {images}: neither a folder nor a URL prefix (http(s)://... "
                        "or /data/...)")
    pending: list[dict] = []
    for image in coco["images"]:
        report.images += 1
        if image["file_name"] in existing:
            report.already_there += 1
            continue
        if safe_name(image["file_name"]) is None:
            report.skipped["unsafe_file_name"] += 1
            logger.warning("file_name %r leaves the image folder; skipped", image["file_name"])
            continue
        existing.add(image["file_name"])  # a name listed twice makes one task
        if folder is not None and not (folder / image["file_name"]).is_file():
            report.skipped["image_file_missing"] += 1
            logger.warning("%s is not in %s; skipped", image["file_name"], folder)
            continue
        task: dict[str, Any] = {"data": {target.data_key: image["file_name"],
                                         KEY: image["file_name"]}}
        if as_what:
            regions = _regions(per_image.get(image["id"], []), categories, image, target,
                               report, score=as_what == "predictions")
            report.boxes += len(regions)
            if as_what == "annotations":
                task["annotations"] = [{"result": regions}]
            else:
                scores = [r["score"] for r in regions]
                task["predictions"] = [{"result": regions, "model_version": IMPORTED_VERSION,
                                        "score": sum(scores) / len(scores) if scores else 0.0}]
        pending.append(task)
        if len(pending) >= batch:
            _import_batch(api, project, pending, images, folder, target.data_key, report)
            pending = []
    if pending:
        _import_batch(api, project, pending, images, folder, target.data_key, report)
    return report


def _is_url_prefix(images: str) -> bool:
    return images.startswith(("http://", "https://", "/data/"))


def _import_batch(api: LabelStudioAPI, project: int, tasks: list[dict], images: str,
                  folder: Path | None, key: str, report: ImportReport) -> None:
    if folder is None:
        for task in tasks:
            task["data"][key] = images + quote(task["data"][key])
    else:
        uploaded = api.upload_files(project, [folder / t["data"][key] for t in tasks])
        for task, url in zip(tasks, uploaded, strict=True):
            task["data"][key] = url
    api.import_tasks(project, tasks)
    report.tasks_created += len(tasks)
