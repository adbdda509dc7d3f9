"""Test doubles at our own adapter boundary: a detector with fixed, known outputs."""

from __future__ import annotations

import numpy as np
from PIL import Image

from backend.model.detector import Detections, DetectorHolder, ModelSpec


class FixedDetector:
    """Returns, for every image, the same boxes given as fractions of the image size."""

    device = "cpu"
    runtime = "fixed"

    def __init__(self, boxes: list[tuple[float, float, float, float, float, int]],
                 class_names: list[str] | None = None, version: str = "fixed-1") -> None:
        self.boxes = boxes
        self.class_names = class_names or ["__background__", "person", "car"]
        self.version = version
        self.calls: list[int] = []

    def predict(self, images: list[Image.Image], batch_size: int = 4) -> list[Detections]:
        self.calls.append(len(images))
        out = []
        for image in images:
            w, h = image.size
            boxes = np.array([[x1 * w, y1 * h, x2 * w, y2 * h]
                              for x1, y1, x2, y2, _, _ in self.boxes], dtype=np.float32)
            out.append(Detections(boxes.reshape(-1, 4),
                                  np.array([b[4] for b in self.boxes], dtype=np.float32),
                                  np.array([b[5] for b in self.boxes], dtype=np.int64)))
        return out


def holder_for(detector: object) -> DetectorHolder:
    spec = ModelSpec("ssdlite320_mobilenet_v3_large", "none", "error", detector.version)  # type: ignore[attr-defined]
    return DetectorHolder.loaded(detector, spec)  # type: ignore[arg-type]
