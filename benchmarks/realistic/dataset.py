"""A scene set on disk: JPEG files and a COCO file, and a contact sheet to look at."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from benchmarks.realistic.catalog import CLASS_NAMES, ZIPF_EXPONENT
from benchmarks.realistic.compose import Preset, Scene, make_scene, preset_for
from benchmarks.realistic.material import SOURCES

GENERATOR_VERSION = 1  # bump when the same seed would draw a different set


def file_name(index: int) -> str:
    """The file name of scene `index` in a set."""
    return f"scene-{index:05d}.jpg"


def scenes_as_coco(scenes: Iterable[tuple[int, Scene]], spec: Preset, seed: int
                   ) -> dict[str, Any]:
    """A COCO dict of (index, scene) pairs; `info` holds the set's recipe and tallies."""
    categories = [{"id": k + 1, "name": name, "supercategory": "emoji"}
                  for k, name in enumerate(CLASS_NAMES[:spec.classes])]
    ids = {name: k + 1 for k, name in enumerate(CLASS_NAMES)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    tally: Counter[str] = Counter()
    per_image: Counter[int] = Counter()
    distractors = dropped = truncated = 0
    for index, scene in scenes:
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": file_name(index), "width": spec.width,
                       "height": spec.height, "background": scene.background})
        for box, label, cut, visible in zip(scene.boxes, scene.labels, scene.truncated,
                                            scene.visible, strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": ids[label], "bbox": [box[0], box[1], w, h],
                                "area": w * h, "iscrowd": 0, "truncated": cut,
                                "visible_fraction": visible})
            tally[label] += 1
            truncated += cut
        per_image[len(scene.boxes)] += 1
        distractors += scene.distractors
        dropped += scene.dropped
    counts = {name: tally[name] for name in CLASS_NAMES[:spec.classes]}
    present = [n for n in counts.values() if n]
    info = {
        "description": f"MLAssist realistic scenes, preset {spec.name}",
        "version": GENERATOR_VERSION, "preset": spec.name, "seed": seed,
        "recipe": {k: v for k, v in vars(spec).items()},
        "zipf_exponent": ZIPF_EXPONENT,
        "class_counts": counts,
        "rarest_over_most_common": round(min(present) / max(present), 4) if present else None,
        "objects_per_image": {str(k): per_image[k] for k in sorted(per_image)},
        "truncated_objects": truncated, "distractors": distractors,
        "dropped_occluded_objects": dropped,
        "box_rule": "visible extent (alpha >= 128, not covered, inside the image); objects "
                    "with less than recipe.min_visible of their pixels visible are dropped",
        "sources": SOURCES,
    }
    return {"info": info, "images": images, "annotations": annotations,
            "categories": categories}


def write_dataset(folder: Path, count: int, preset: str = "standard", seed: int = 0,
                  width: int | None = None, height: int | None = None) -> dict[str, Any]:
    """Write `count` scenes as `folder/images/scene-NNNNN.jpg` and `folder/coco.json`."""
    spec = preset_for(preset, width, height)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)

    def scenes() -> Iterable[tuple[int, Scene]]:
        for index in range(count):
            scene = make_scene(index, spec, seed)
            (images / file_name(index)).write_bytes(scene.jpeg)
            yield index, scene

    coco = scenes_as_coco(scenes(), spec, seed)
    (folder / "coco.json").write_text(json.dumps(coco, indent=1), encoding="utf-8")
    return coco


def contact_sheet(scenes: list[Scene], columns: int = 4, boxes: bool = True,
                  scale: float = 0.5) -> Image.Image:
    """The scenes side by side, with their ground-truth boxes and labels drawn when `boxes`."""
    tiles = []
    for scene in scenes:
        tile = scene.image.copy()
        if boxes:
            draw = ImageDraw.Draw(tile)
            for (x1, y1, x2, y2), label in zip(scene.boxes, scene.labels, strict=True):
                draw.rectangle((x1, y1, x2 - 1, y2 - 1), outline=(255, 0, 255), width=2)
                draw.text((x1 + 2, y1 + 1), label, fill=(255, 255, 0))
        tiles.append(tile.resize((round(tile.width * scale), round(tile.height * scale)),
                                 Image.Resampling.LANCZOS))
    width, height = tiles[0].size
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * width + (columns - 1) * 4,
                              rows * height + (rows - 1) * 4), "white")
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % columns) * (width + 4), (k // columns) * (height + 4)))
    return sheet
