"""torchvision detection architectures MLAssist can build by name, and their COCO weights.

Nothing here downloads: COCO weights are loaded from the torch hub cache when present, and a
missing file raises ModelError naming the file and the URL to fetch it from.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.errors import ModelError

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

DEFAULT_ARCH = "ssdlite320_mobilenet_v3_large"
UNTRAINED_SEED = 0


@dataclass(frozen=True)
class Architecture:
    """A torchvision detection builder and the name of its COCO weights enum."""

    name: str
    weights_enum: str
    coco_file: str  # basename of torchvision's COCO weights URL (a test checks it)
    note: str

    def builder(self) -> Any:
        from torchvision.models import detection

        return getattr(detection, self.name)

    def coco_weights(self) -> Any:
        from torchvision.models import detection

        return getattr(detection, self.weights_enum).COCO_V1


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture("ssdlite320_mobilenet_v3_large", "SSDLite320_MobileNet_V3_Large_Weights",
                     "ssdlite320_mobilenet_v3_large_coco-a79551df.pth",
                     "default: ~55 ms/image and trainable on a 2-core CPU"),
        Architecture("fasterrcnn_mobilenet_v3_large_320_fpn",
                     "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights",
                     "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth",
                     "~120 ms/image on CPU; fine-tune from COCO weights, not from scratch"),
        Architecture("fasterrcnn_mobilenet_v3_large_fpn",
                     "FasterRCNN_MobileNet_V3_Large_FPN_Weights",
                     "fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth",
                     "800 px input; GPU training"),
        Architecture("fasterrcnn_resnet50_fpn_v2", "FasterRCNN_ResNet50_FPN_V2_Weights",
                     "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth", "accurate, GPU"),
        Architecture("retinanet_resnet50_fpn_v2", "RetinaNet_ResNet50_FPN_V2_Weights",
                     "retinanet_resnet50_fpn_v2_coco-5905b1c5.pth", "accurate, GPU"),
        Architecture("fcos_resnet50_fpn", "FCOS_ResNet50_FPN_Weights",
                     "fcos_resnet50_fpn_coco-99b0c9b7.pth", "accurate, GPU"),
    )
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ModelError(f"unknown MODEL_ARCH {name!r}; choose one of "
                         f"{', '.join(sorted(ARCHITECTURES))}") from None


def coco_class_names(arch: str) -> list[str]:
    """The 91 COCO category names of torchvision's detection weights (index = label id)."""
    return list(get_architecture(arch).coco_weights().meta["categories"])


def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch (TORCH_HOME, XDG_CACHE_HOME, ~/.cache)."""
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return Path(os.getenv("TORCH_HOME", os.path.join(cache, "torch"))).expanduser() / "hub"


def coco_weights_path(arch: str) -> Path:
    """Where torchvision caches the COCO weights file of `arch` (cheap: no torch import)."""
    return torch_hub_dir() / "checkpoints" / get_architecture(arch).coco_file


def build_model(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """An architecture with freshly initialised weights; never downloads anything."""
    return get_architecture(arch).builder()(
        weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)


def build_coco_model(arch: str) -> nn.Module:
    """An architecture with torchvision's COCO weights, read from the local torch cache."""
    import torch

    weights = get_architecture(arch).coco_weights()
    path = coco_weights_path(arch)
    if not path.is_file():
        raise ModelError(
            f"COCO weights for {arch} are not in the torch cache: fetch {weights.url} to {path} "
            "(or set MODEL_WEIGHTS=none, or MODEL_WEIGHTS_FALLBACK=none to serve untrained)")
    model = build_model(arch, num_classes=len(weights.meta["categories"]))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:
        raise ModelError(f"COCO weights file {path} could not be loaded ({exc}); delete it "
                         f"and fetch {weights.url} again") from None
    return model


def build_untrained_model(arch: str, num_classes: int) -> nn.Module:
    """A seeded, untrained model, identical in every process (one version, same boxes)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(UNTRAINED_SEED)
        return build_model(arch, num_classes=num_classes)
