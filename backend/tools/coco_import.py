"""COCO import: each COCO image becomes a task (its `file_name` under a URL prefix, or uploaded
from a folder), optionally with its boxes as annotations or as predictions, in batches of one
request each. A task carries its COCO `file_name` in `data.mlassist_coco`, so importing the
same file again adds nothing.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from backend.labelstudio.boxes import to_region
from backend.labelstudio.client import LabelStudioAPI
from backend.labelstudio.label_config import parse_label_config
from backend.tools.coco_export import KEY, CocoError, safe_name

logger = logging.getLogger(__name__)

IMPORTED_VERSION = "coco-import"


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
