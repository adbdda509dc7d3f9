"""The checkpoint format: one dict written atomically, loaded with `weights_only=True`.

Keys: `format`, `arch`, `class_names` (index 0 is the background, as torchvision numbers
labels from 1), `state_dict`, `model_version`, `metrics`, `train_config`, `created_at`; trained
versions add `thresholds` (class name -> calibrated score threshold or None), `calibration`,
`train_labels` and `parent`. Only plain types, so `weights_only=True` loads it.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from backend.core.errors import ModelError
from backend.core.files import atomic_file

FORMAT = 1
BACKGROUND = "__background__"
REQUIRED_KEYS = ("format", "arch", "class_names", "state_dict")


def save_checkpoint(path: Path, *, arch: str, class_names: list[str], state_dict: dict,
                    model_version: str = "", metrics: dict | None = None,
                    train_config: dict | None = None, extra: dict | None = None) -> Path:
    """Write a checkpoint atomically (temp file in the same directory, then rename)."""
    import torch

    if not class_names or class_names[0] != BACKGROUND:
        raise ValueError(f"class_names must start with {BACKGROUND!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "arch": arch,
        "class_names": list(class_names),
        "state_dict": state_dict,
        "model_version": model_version,
        "metrics": metrics or {},
        "train_config": train_config or {},
        "created_at": time.time(),
        **(extra or {}),
    }
    with atomic_file(path) as handle:
        torch.save(payload, handle)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read and check a checkpoint; raises ModelError saying what is wrong with the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist (MODEL_WEIGHTS)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"checkpoint {path} cannot be read: {exc}") from None
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED_KEYS):
        raise ModelError(f"checkpoint {path} is not an MLAssist checkpoint (needs keys "
                         f"{', '.join(REQUIRED_KEYS)})")
    if payload["format"] != FORMAT:
        raise ModelError(f"checkpoint {path} has format {payload['format']}, expected {FORMAT}")
    return payload


def file_digest(path: Path) -> str:
    """sha256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
