"""Generated scenes: shapes on textured backgrounds, with their ground-truth boxes.

The built-in demo labels these, and tests and benchmarks train and measure on them, so nothing
is downloaded. A scene is a pure function of its seed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from backend.labelstudio.boxes import to_region

SHAPES = ("circle", "square", "triangle")
LABEL_CONFIG = ('<View><Image name="image" value="$image"/>'
                '<RectangleLabels name="label" toName="image">'
                + "".join(f'<Label value="{shape}"/>' for shape in SHAPES)
                + "</RectangleLabels></View>")
SCENE_NAME = re.compile(r"scene-(\d+)\.(?:jpe?g|png)(?:$|\?)")  # a SAS query may follow
PALETTE = ((220, 60, 50), (40, 140, 220), (250, 200, 40), (60, 180, 90), (150, 80, 200))


@dataclass(frozen=True)
class Scene:
    """An image and its objects: xyxy pixel boxes with their shape names."""

    image: Image.Image
    boxes: list[tuple[float, float, float, float]]
    labels: list[str]


def make_scene(seed: int, width: int = 320, height: int = 240, max_objects: int = 5) -> Scene:
    """A noisy, blurred background with 1..max_objects non-overlapping shapes."""
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 200, 3)
    noise = rng.normal(0, 25, (height // 8, width // 8, 3))
    background = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(background).resize((width, height), Image.Resampling.BILINEAR)
    image = image.filter(ImageFilter.GaussianBlur(1))
    draw = ImageDraw.Draw(image)
    boxes: list[tuple[float, float, float, float]] = []
    labels: list[str] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            size = float(rng.uniform(0.12, 0.3) * min(width, height))
            x1 = float(rng.uniform(0, width - size))
            y1 = float(rng.uniform(0, height - size))
            box = (x1, y1, x1 + size, y1 + size)
            if all(_separate(box, other) for other in boxes):
                break
        else:
            continue
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = PALETTE[int(rng.integers(len(PALETTE)))]
        if shape == "circle":
            draw.ellipse(box, fill=color)
        elif shape == "square":
            draw.rectangle(box, fill=color)
        else:
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, box[1])],
                         fill=color)
        boxes.append(box)
        labels.append(shape)
    return Scene(image, boxes, labels)


def _separate(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def write_scenes(directory: Path, count: int, start_seed: int = 0) -> list[Path]:
    """Write `count` scenes as JPEG files named scene-<seed>.jpg; existing files are kept."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(start_seed, start_seed + count):
        path = directory / f"scene-{seed:05d}.jpg"
        if not path.exists():
            make_scene(seed).image.save(path, quality=92)
        paths.append(path)
    return paths


def seed_of(name: str) -> int | None:
    """The seed in a scene's file name or URL (`.../scene-00012.jpg` -> 12), else None."""
    match = SCENE_NAME.search(name)
    return int(match.group(1)) if match else None


def scene_regions(scene: Scene, from_name: str = "label", to_name: str = "image") -> list[dict]:
    """The scene's ground truth as a Label Studio annotation result."""
    width, height = scene.image.size
    regions = []
    for box, label in zip(scene.boxes, scene.labels, strict=True):
        region = to_region(box, score=1.0, label=label, width=width, height=height,
                           from_name=from_name, to_name=to_name)
        if region is not None:
            region.pop("score")
            regions.append(region)
    return regions
