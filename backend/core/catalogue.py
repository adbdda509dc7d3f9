"""The detector architectures a user can name (MODEL_ARCH, `mlassist archs`): pure data.

Settings check a name against this table, so it sits in core; torchvision is imported only
when a builder or weights enum is looked up (backend/model/architectures.py builds models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backend.core.errors import ModelError

DEFAULT_ARCH = "ssdlite320_mobilenet_v3_large"


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
