"""torchvision detection architectures MLAssist can build by name, and their pretrained
weights.

Nothing here downloads: COCO and ImageNet weights are loaded from the torch hub cache when
present, and a missing file raises ModelError naming the `mlassist weights fetch` command.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.core.catalogue import ARCHITECTURES, DEFAULT_ARCH, Architecture, get_architecture
from backend.core.errors import ModelError

__all__ = ["ARCHITECTURES", "DEFAULT_ARCH", "Architecture", "get_architecture"]

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

UNTRAINED_SEED = 0


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


def checkpoints_dir() -> Path:
    """torch.hub's checkpoints folder, where torchvision's `load_state_dict_from_url` looks."""
    return torch_hub_dir() / "checkpoints"


def coco_weights_path(arch: str) -> Path:
    """Where torchvision caches the COCO weights file of `arch` (cheap: no torch import)."""
    spec = get_architecture(arch)
    if spec.coco_file is None:
        raise ModelError(f"{arch} has no COCO weights; use MODEL_WEIGHTS=imagenet or none")
    return checkpoints_dir() / spec.coco_file


def has_coco_weights(arch: str) -> bool:
    """Whether torchvision's COCO weights of `arch` exist and are in the torch cache."""
    return get_architecture(arch).coco_file is not None and coco_weights_path(arch).is_file()


def builder(arch: str) -> Any:
    """The torchvision-style builder function of `arch` (ours or torchvision's)."""
    spec = get_architecture(arch)
    return getattr(importlib.import_module(spec.module), spec.name)


def build_model(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """An architecture with freshly initialised weights; never downloads anything."""
    return builder(arch)(weights=None, weights_backbone=None, num_classes=num_classes,
                         **kwargs)


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
