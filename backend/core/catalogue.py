"""The detector architectures a user can name (MODEL_ARCH, `mlassist archs`): pure data.

Settings check a name against this table, so it sits in core; torchvision is imported only
when a weights enum is looked up, and the builders live in backend/model/architectures.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backend.core.errors import ModelError

DEFAULT_ARCH = "ssdlite320_mobilenet_v3_large"


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
