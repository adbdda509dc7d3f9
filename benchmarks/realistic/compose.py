"""One realistic scene: emoji objects and distractors on a cropped photograph, degraded like
a camera image, with COCO-style ground truth.

A scene is a pure function of (set seed, index, preset, size). Boxes follow COCO: a box covers
the *visible* extent of its object (pixels with alpha >= 128 that no later object covers and
that lie inside the image). An object with less than `min_visible` of its pixels visible
(covered by later objects or cut by the border), or whose visible box is under MIN_BOX_SIDE
on a side, is dropped from the ground truth and counted in `Scene.dropped`; placement keeps
that rare (labelled objects overlap at most `max_overlap` of the smaller one's box).
"""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from benchmarks.realistic.catalog import CLASSES, DISTRACTORS, LOOKALIKES, class_frequencies
from benchmarks.realistic.material import Sprite, backgrounds, sprite

MIN_BOX_SIDE = 4  # px: a visible sliver thinner than this is no object to a labeler
ALPHA_OPAQUE = 128


@dataclass(frozen=True)
class Preset:
    """How hard a scene set is. Sizes are the longer side of an object's full box, in px."""

    name: str
    classes: int = len(CLASSES)  # label classes used: the most common ones of CLASSES
    width: int = 480
    height: int = 360
    mean_objects: float = 5.0  # labelled objects drawn: 1 + NegBin(2, mean - 1), capped
    max_objects: int = 15
    empty_fraction: float = 0.05  # images with no labelled object at all
    min_size: float = 16.0
    max_size_fraction: float = 0.5  # of the shorter image side
    max_rotation: float = 20.0  # degrees either way
    any_rotation_p: float = 0.0  # share of objects at any angle
    squash: float = 0.1  # aspect ratio changes by up to this factor either way
    max_overlap: float = 0.3  # intersection over the smaller full box, labelled objects
    max_truncation: float = 0.3  # share of an object's width/height that may lie outside
    min_visible: float = 0.25
    max_distractors: int = 3
    lookalike_p: float = 0.0  # share of distractors that resemble a class
    object_jitter: float = 0.15  # per-object brightness/contrast/saturation/colour cast
    shadow_p: float = 0.4
    light: float = 0.2  # amplitude of a global lighting gradient
    gamma: float = 0.2
    blur_p: float = 0.3
    blur_max: float = 1.0  # Gaussian radius, px
    noise_max: float = 4.0  # sensor noise sigma, 8-bit levels
    jpeg_quality: tuple[int, int] = (70, 95)


PRESETS: dict[str, Preset] = {
    "standard": Preset("standard"),
    "hard": Preset("hard", mean_objects=8.0, min_size=12.0, max_rotation=45.0,
                   any_rotation_p=0.15, squash=0.2, max_overlap=0.6, max_truncation=0.6,
                   min_visible=0.15, max_distractors=6, lookalike_p=0.6, object_jitter=0.3,
                   shadow_p=0.6, light=0.45, gamma=0.4, blur_p=0.6, blur_max=2.2,
                   noise_max=10.0, jpeg_quality=(30, 80)),
}


@dataclass
class Scene:
    """A rendered scene: the decoded JPEG, its bytes, and the ground truth (xyxy pixels)."""

    image: Image.Image
    jpeg: bytes
    boxes: list[tuple[float, float, float, float]]
    labels: list[str]
    truncated: list[bool] = field(default_factory=list)
    visible: list[float] = field(default_factory=list)  # visible share of each object
    distractors: int = 0
    dropped: int = 0
    background: str = ""


@dataclass
class _Placed:
    sprite: Image.Image
    x: int
    y: int
    label: str | None  # None: a distractor
    opaque: int = 0


def preset_for(name: str, width: int | None = None, height: int | None = None,
               **changes: Any) -> Preset:
    """A named preset, optionally at another image size or with other fields changed."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    preset = PRESETS[name]
    spec = replace(preset, width=width or preset.width, height=height or preset.height,
                   **changes)
    if not 1 <= spec.classes <= len(CLASSES):
        raise ValueError(f"classes must be 1..{len(CLASSES)}, not {spec.classes}")
    return spec


def make_scene(index: int, preset: str | Preset = "standard", seed: int = 0) -> Scene:
    """Scene `index` of the set (`preset`, `seed`): the same arguments give the same bytes."""
    spec = preset_for(preset) if isinstance(preset, str) else preset
    rng = np.random.default_rng([seed, index, zlib.crc32(spec.name.encode())])
    name, canvas = _background(rng, spec)
    # A negative binomial: mostly a handful of objects, now and then a crowd of 15.
    extra = rng.negative_binomial(2, 2 / (2 + spec.mean_objects - 1))
    count = 0 if rng.random() < spec.empty_fraction else int(min(spec.max_objects, 1 + extra))
    classes = rng.choice(spec.classes, size=count, p=class_frequencies(spec.classes))
    items: list[tuple[str | None, Sprite]] = [(CLASSES[k][0], sprite(*CLASSES[k]))
                                              for k in classes]
    for _ in range(int(rng.integers(0, spec.max_distractors + 1))):
        pool = LOOKALIKES if rng.random() < spec.lookalike_p else DISTRACTORS
        items.append((None, sprite(*pool[int(rng.integers(len(pool)))])))
    order = rng.permutation(len(items))  # distractors occlude objects and the other way round
    placed: list[_Placed] = []
    for position in order:
        label, art = items[position]
        item = _place(rng, spec, art, label, placed)
        if item is not None:
            placed.append(item)
    scene = _render(rng, spec, canvas, placed)
    scene.background = name
    return scene


def _background(rng: np.random.Generator, spec: Preset) -> tuple[str, Image.Image]:
    """A random crop (30-100 % of the largest one of the right aspect) of a random photo."""
    photos = backgrounds()
    name, photo = photos[int(rng.integers(len(photos)))]
    aspect = spec.width / spec.height
    full_w = min(photo.width, photo.height * aspect)
    scale = math.sqrt(rng.uniform(0.3, 1.0))
    crop_w, crop_h = full_w * scale, full_w * scale / aspect
    x = rng.uniform(0, photo.width - crop_w)
    y = rng.uniform(0, photo.height - crop_h)
    image = photo.resize((spec.width, spec.height), Image.Resampling.BILINEAR,
                         box=(x, y, x + crop_w, y + crop_h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return name, image


def _jitter_colours(rng: np.random.Generator, image: Image.Image, amount: float) -> Image.Image:
    """Brightness, contrast, saturation and a colour cast on the RGB of an RGBA sprite."""
    pixels = np.asarray(image, dtype=np.float32)
    rgb, alpha = pixels[..., :3], pixels[..., 3:]
    gray = rgb.mean(axis=2, keepdims=True)
    rgb = gray + (rgb - gray) * (1 + rng.uniform(-amount, amount) * 2)  # saturation
    mean = float(rgb.mean())
    rgb = mean + (rgb - mean) * (1 + rng.uniform(-amount, amount))  # contrast
    rgb = rgb * (1 + rng.uniform(-amount, amount)) * (1 + rng.uniform(-amount, amount, 3) / 3)
    out = np.concatenate([np.clip(rgb, 0, 255), alpha], axis=2).astype(np.uint8)
    return Image.fromarray(out, "RGBA")


def _transform(rng: np.random.Generator, spec: Preset, art: Sprite, size: float) -> Image.Image:
    """Flip, recolour, rotate and scale a sprite so its longer side is `size` px."""
    image = art.image
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = _jitter_colours(rng, image, spec.object_jitter)
    angle = (rng.uniform(-180, 180) if rng.random() < spec.any_rotation_p
             else rng.uniform(-spec.max_rotation, spec.max_rotation))
    # Premultiplied alpha, so the transparent (black) pixels do not bleed into the edges.
    image = image.convert("RGBa").rotate(float(angle), Image.Resampling.BICUBIC, expand=True)
    image = image.crop(image.getchannel(3).point(lambda a: 255 if a >= 64 else 0).getbbox())
    stretch = math.exp(rng.uniform(-spec.squash, spec.squash))
    w, h = image.width * stretch, image.height / stretch
    factor = size / max(w, h)
    image = image.resize((max(2, round(w * factor)), max(2, round(h * factor))),
                         Image.Resampling.BICUBIC if factor > 1 else Image.Resampling.LANCZOS)
    return image.convert("RGBA")


def _place(rng: np.random.Generator, spec: Preset, art: Sprite, label: str | None,
           placed: list[_Placed]) -> _Placed | None:
    """Size, position and transform one object; None when no spot respects `max_overlap`."""
    largest = spec.max_size_fraction * min(spec.width, spec.height)
    size = math.exp(rng.uniform(math.log(spec.min_size), math.log(largest)))
    image = _transform(rng, spec, art, size)
    w, h = image.size
    margin_x, margin_y = int(w * spec.max_truncation), int(h * spec.max_truncation)
    for _attempt in range(12):
        x = int(rng.integers(-margin_x, spec.width - w + margin_x + 1))
        y = int(rng.integers(-margin_y, spec.height - h + margin_y + 1))
        if label is None or all(_overlap((x, y, w, h), other) <= spec.max_overlap
                                for other in placed if other.label is not None):
            return _Placed(image, x, y, label)
    return None


def _overlap(box: tuple[int, int, int, int], other: _Placed) -> float:
    x, y, w, h = box
    ow, oh = other.sprite.size
    ix = max(0, min(x + w, other.x + ow) - max(x, other.x))
    iy = max(0, min(y + h, other.y + oh) - max(y, other.y))
    return ix * iy / max(1, min(w * h, ow * oh))


def _shadow(canvas: Image.Image, item: _Placed, rng: np.random.Generator) -> None:
    """A soft, offset shadow under an object (not part of the object or its box)."""
    alpha = item.sprite.getchannel("A").filter(ImageFilter.GaussianBlur(2))
    alpha = alpha.point(lambda a: int(a * 0.45))
    dx, dy = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    canvas.paste((0, 0, 0), (item.x + dx, item.y + dy), alpha)


def _render(rng: np.random.Generator, spec: Preset, canvas: Image.Image,
            placed: list[_Placed]) -> Scene:
    """Composite the objects in order, find what stays visible, then degrade the image."""
    owner = np.full((spec.height, spec.width), -1, dtype=np.int16)
    for index, item in enumerate(placed):
        if rng.random() < spec.shadow_p:
            _shadow(canvas, item, rng)
        canvas.paste(item.sprite, (item.x, item.y), item.sprite)
        opaque = np.asarray(item.sprite.getchannel("A")) >= ALPHA_OPAQUE
        item.opaque = int(opaque.sum())
        x1, y1 = max(0, item.x), max(0, item.y)
        x2 = min(spec.width, item.x + item.sprite.width)
        y2 = min(spec.height, item.y + item.sprite.height)
        if x2 > x1 and y2 > y1:
            inside = opaque[y1 - item.y:y2 - item.y, x1 - item.x:x2 - item.x]
            owner[y1:y2, x1:x2][inside] = index
    scene = Scene(canvas, b"", [], [])
    for index, item in enumerate(placed):
        if item.label is None:
            scene.distractors += 1
            continue
        ys, xs = np.nonzero(owner == index)
        visible = len(xs) / max(1, item.opaque)
        if visible < spec.min_visible or len(xs) == 0:
            scene.dropped += 1
            continue
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        if box[2] - box[0] < MIN_BOX_SIDE or box[3] - box[1] < MIN_BOX_SIDE:
            scene.dropped += 1
            continue
        scene.boxes.append(box)
        scene.labels.append(item.label)
        scene.visible.append(round(visible, 3))
        scene.truncated.append(item.x < 0 or item.y < 0 or item.x + item.sprite.width
                               > spec.width or item.y + item.sprite.height > spec.height)
    scene.jpeg = _degrade(rng, spec, canvas)
    scene.image = Image.open(io.BytesIO(scene.jpeg)).convert("RGB")
    return scene


def _degrade(rng: np.random.Generator, spec: Preset, image: Image.Image) -> bytes:
    """Lighting gradient, gamma, blur, sensor noise and JPEG compression; the JPEG bytes."""
    if rng.random() < spec.blur_p:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, spec.blur_max))))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[-1:1:complex(0, spec.height), -1:1:complex(0, spec.width)]
    gradient = (math.cos(angle) * xs + math.sin(angle) * ys) / math.sqrt(2)
    light = 1 + rng.uniform(0, spec.light) * gradient.astype(np.float32)
    pixels = pixels * light[..., None] * (1 + rng.uniform(-0.05, 0.05, 3).astype(np.float32))
    pixels = np.clip(pixels, 0, 1) ** math.exp(rng.uniform(-spec.gamma, spec.gamma))
    sigma = rng.uniform(0, spec.noise_max)
    noisy = pixels * 255 + rng.standard_normal(pixels.shape, dtype=np.float32) * sigma
    out = Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    low, high = spec.jpeg_quality
    out.save(buffer, format="JPEG", quality=int(rng.integers(low, high + 1)))
    return buffer.getvalue()
