"""Realistic scenes as the training engine's items (Sample, LoadedImage), in memory."""

from __future__ import annotations

import numpy as np

from backend.media.images import LoadedImage
from backend.model.dataset import Sample
from benchmarks.realistic.catalog import CLASS_NAMES
from benchmarks.realistic.compose import make_scene

MODEL_CLASS_NAMES = ["__background__", *CLASS_NAMES]  # a detector's classes: 0 is background


def scene_items(indices: range, preset: str = "standard",
                seed: int = 0) -> list[tuple[Sample, LoadedImage]]:
    """Scenes `indices` of a preset and seed, their task ids the scene indices."""
    items = []
    for index in indices:
        scene = make_scene(index, preset, seed)
        items.append((Sample(task_id=index, data_key="image", reference=str(index),
                             boxes=np.array(scene.boxes, np.float32).reshape(-1, 4),
                             labels=np.array([MODEL_CLASS_NAMES.index(n) for n in scene.labels],
                                             np.int64), validation=False),
                      LoadedImage(scene.image)))
    return items
