"""torchvision detection architectures MLAssist can build by name, and their COCO weights.

Nothing here downloads: COCO weights are loaded from the torch hub cache when present, and a
missing file raises ModelError naming the file and `mlassist weights fetch`. ImageNet starts
(MODEL_WEIGHTS=imagenet) are built in `backend.model.backbones`.
"""

from __future__ import annotations

import importlib
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
    """A detection builder, its COCO weights enum and its backbone's ImageNet weights."""

    name: str
    weights_enum: str | None  # None: torchvision publishes no COCO weights for it
    coco_file: str | None  # basename of torchvision's COCO weights URL (a test checks it)
    note: str
    backbone_weights: str  # torchvision's ImageNet weights of the backbone, Enum.MEMBER
    imagenet_file: str  # basename of their URL (a test checks it)
    module: str = "torchvision.models.detection"  # where the builder `name` lives

    def builder(self) -> Any:
        return getattr(importlib.import_module(self.module), self.name)

    def coco_weights(self) -> Any:
        from torchvision.models import detection

        if self.weights_enum is None:
            raise ModelError(f"{self.name} has no COCO weights; use MODEL_WEIGHTS=imagenet "
                             "or none")
        return getattr(detection, self.weights_enum).COCO_V1

    def imagenet_weights(self) -> Any:
        import torchvision.models

        enum, member = self.backbone_weights.split(".")
        return getattr(getattr(torchvision.models, enum), member)


MOBILENET_V3_IMAGENET = ("MobileNet_V3_Large_Weights.IMAGENET1K_V1",
                         "mobilenet_v3_large-8738ca79.pth")
RESNET50_IMAGENET = ("ResNet50_Weights.IMAGENET1K_V1", "resnet50-0676ba61.pth")


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture("ssdlite320_mobilenet_v3_large", "SSDLite320_MobileNet_V3_Large_Weights",
                     "ssdlite320_mobilenet_v3_large_coco-a79551df.pth",
                     "default: ~55 ms/image and trainable on a 2-core CPU",
                     *MOBILENET_V3_IMAGENET),
        Architecture("ssdlite320_mobilenet_v2", None, None,
                     "no COCO weights; MODEL_WEIGHTS=imagenet works offline (see README)",
                     "MobileNet_V2_Weights.IMAGENET1K_V1", "mobilenet_v2-b0353104.pth",
                     module="backend.model.backbones"),
        Architecture("fasterrcnn_mobilenet_v3_large_320_fpn",
                     "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights",
                     "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth",
                     "~120 ms/image on CPU; fine-tune from COCO weights, not from scratch",
                     *MOBILENET_V3_IMAGENET),
        Architecture("fasterrcnn_mobilenet_v3_large_fpn",
                     "FasterRCNN_MobileNet_V3_Large_FPN_Weights",
                     "fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth",
                     "800 px input; GPU training", *MOBILENET_V3_IMAGENET),
        Architecture("fasterrcnn_resnet50_fpn_v2", "FasterRCNN_ResNet50_FPN_V2_Weights",
                     "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth", "accurate, GPU",
                     *RESNET50_IMAGENET),
        Architecture("retinanet_resnet50_fpn_v2", "RetinaNet_ResNet50_FPN_V2_Weights",
                     "retinanet_resnet50_fpn_v2_coco-5905b1c5.pth", "accurate, GPU",
                     *RESNET50_IMAGENET),
        Architecture("fcos_resnet50_fpn", "FCOS_ResNet50_FPN_Weights",
                     "fcos_resnet50_fpn_coco-99b0c9b7.pth", "accurate, GPU",
                     *RESNET50_IMAGENET),
    )
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ModelError(f"unknown MODEL_ARCH {name!r}; choose one of "
                         f"{', '.join(sorted(ARCHITECTURES))}") from None


def coco_class_names(arch: str) -> list[str]:
    """The 91 COCO category names of torchvision's detection weights (index = label id); an
    architecture without COCO weights gets the same names for its base model's heads."""
    if get_architecture(arch).weights_enum is None:
        arch = DEFAULT_ARCH
    return list(get_architecture(arch).coco_weights().meta["categories"])


def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch (TORCH_HOME, XDG_CACHE_HOME, ~/.cache)."""
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return Path(os.getenv("TORCH_HOME", os.path.join(cache, "torch"))).expanduser() / "hub"


def coco_weights_path(arch: str) -> Path:
    """Where torchvision caches the COCO weights file of `arch` (cheap: no torch import)."""
    spec = get_architecture(arch)
    if spec.coco_file is None:
        raise ModelError(f"{arch} has no COCO weights; use MODEL_WEIGHTS=imagenet or none")
    return torch_hub_dir() / "checkpoints" / spec.coco_file


def has_coco_weights(arch: str) -> bool:
    """Whether torchvision's COCO weights of `arch` exist and are in the torch cache."""
    return get_architecture(arch).coco_file is not None and coco_weights_path(arch).is_file()


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
            f"COCO weights for {arch} are not in the torch cache: run `mlassist weights fetch "
            f"--arch {arch} --coco` (it fetches {weights.url} to {path}; without internet: "
            "`mlassist weights import FILE`), or set MODEL_WEIGHTS=none, or "
            "MODEL_WEIGHTS_FALLBACK=none to serve untrained")
    model = build_model(arch, num_classes=len(weights.meta["categories"]))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:
        raise ModelError(f"COCO weights file {path} could not be loaded ({exc}); delete it "
                         f"and run `mlassist weights fetch --arch {arch} --coco`") from None
    return model


def build_untrained_model(arch: str, num_classes: int) -> nn.Module:
    """A seeded, untrained model, identical in every process (one version, same boxes)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(UNTRAINED_SEED)
        return build_model(arch, num_classes=num_classes)
