"""The ONNX Runtime forward: same detections as eager torch, chosen only where it can serve."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from backend.core.errors import ModelError
from backend.demo.scenes import make_scene
from backend.model import runtime
from backend.model.architectures import build_untrained_model
from backend.model.detector import Detector

SSD = "ssdlite320_mobilenet_v3_large"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_untrained_model(SSD, num_classes=4).eval()


def box_match(a, b) -> tuple[float, float]:
    """(lowest IoU, largest score difference) matching each box of `a` to `b`'s same-label
    box of highest IoU."""
    from torchvision.ops import box_iou

    iou = box_iou(torch.from_numpy(a.boxes), torch.from_numpy(b.boxes))
    iou[torch.from_numpy(a.labels[:, None] != b.labels[None, :])] = 0.0
    best, match = iou.max(dim=1)
    return float(best.min()), float(np.abs(a.scores - b.scores[match.numpy()]).max())


def test_onnx_detections_equal_eager_torch(model: torch.nn.Module) -> None:
    eager = Detector(model, ["__background__", "a", "b", "c"], "v", "cpu", runtime="torch")
    onnx = Detector(model, ["__background__", "a", "b", "c"], "v", "cpu",
                    runtime="onnxruntime", threads=2)
    assert (eager.runtime, onnx.runtime) == ("torch", "onnxruntime")
    # The export must leave the shared model in eval mode (it restores the mode it finds).
    assert not any(module.training for module in model.modules())
    images = [make_scene(seed, 640, 480).image for seed in range(3)] + \
        [make_scene(7, 200, 500).image]
    for a, b in zip(eager.predict(images), onnx.predict(images), strict=True):
        assert len(a.boxes) == len(b.boxes) > 0
        top = slice(0, 20)  # the best boxes: their ranks are not near-ties at a cut-off
        lowest_iou, score_gap = box_match(
            type(a)(a.boxes[top], a.scores[top], a.labels[top]), b)
        assert lowest_iou > 0.999 and score_gap < 1e-4, (lowest_iou, score_gap)
    wide = onnx.predict([make_scene(7, 200, 500).image])[0]
    assert wide.boxes[:, 2].max() <= 200.0 + 1e-3 and wide.boxes[:, 3].max() <= 500.0 + 1e-3


def test_auto_uses_onnx_for_ssd_on_cpu_only(model: torch.nn.Module) -> None:
    _, name = runtime.choose_forward(model, "auto", "cpu", 1)
    assert name == "onnxruntime"
    _, name = runtime.choose_forward(model, "torch", "cpu", 1)
    assert name == "torch"
    assert "CPU only" in str(runtime._onnx_unavailable(model, "cuda"))


def test_a_model_onnx_cannot_serve_stays_on_torch(caplog: pytest.LogCaptureFixture) -> None:
    other = build_untrained_model("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3).eval()
    with caplog.at_level(logging.INFO):
        _, name = runtime.choose_forward(other, "auto", "cpu", 1)
    assert name == "torch" and "FasterRCNN models run on torch" in caplog.text
    with pytest.raises(ModelError, match="INFERENCE_RUNTIME=onnxruntime cannot be used"):
        runtime.choose_forward(other, "onnxruntime", "cpu", 1)


def test_outputs_outside_the_tolerance_keep_torch(model: torch.nn.Module,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(runtime, "TOLERANCE", -1.0)  # any difference is too much
    with caplog.at_level(logging.INFO):
        _, name = runtime.choose_forward(model, "auto", "cpu", 1)
    assert name == "torch" and "differ from torch's" in caplog.text
    with pytest.raises(ModelError, match="differ from torch's"):
        runtime.choose_forward(model, "onnxruntime", "cpu", 1)


def test_missing_onnxruntime_is_named(model: torch.nn.Module,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_onnxruntime(name: str, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'", name="onnxruntime")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(ModelError, match="onnxruntime is not installed"):
        runtime.choose_forward(model, "onnxruntime", "cpu", 1)
    assert runtime.choose_forward(model, "auto", "cpu", 1)[1] == "torch"
