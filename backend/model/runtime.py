"""How a detector's forward runs: eager torch, or ONNX Runtime for SSD models on the CPU.

ONNX Runtime runs only the convolutional part (backbone and head) of an SSD, which is where the
time goes (13 ms of a 17 ms eager forward on 2 cores; ONNX Runtime does it in about 3 ms).
The model's own torch code still resizes the images, generates the anchors and decodes and
suppresses the boxes, so the detections are torchvision's, computed from the same numbers.

The graph is exported when a model loads (about 0.5 s, through a temporary file; nothing is
kept on disk) and checked against eager torch on a fixed input: if a head output differs by
more than `TOLERANCE`, the detector stays on torch and says why in the log.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from backend.core.errors import ModelError

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnxruntime", "torch")
# Largest absolute difference accepted between ONNX Runtime's and torch's head outputs (class
# logits and box regressions) on the check input; seen: about 3e-6.
TOLERANCE = 1e-3
OPSET = 17

# uint8 CHW images in, torchvision detections (boxes in the images' pixels) out.
Forward = Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]]


def eager_forward(model: Any, device: str) -> Forward:
    """The model's own forward (any torchvision detector, any device) on uint8 images."""

    def forward(images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        floats = [image.to(device, dtype=torch.float32).div_(255.0) for image in images]
        result: list[dict[str, torch.Tensor]] = model(floats)
        return result

    return forward


def supports_onnx(model: Any) -> bool:
    """True for torchvision SSD and SSDlite models, the ones this path knows how to split."""
    from torchvision.models.detection.ssd import SSD

    return isinstance(model, SSD)


def choose_forward(model: Any, runtime: str, device: str, threads: int) -> tuple[Forward, str]:
    """(forward, runtime name) for `runtime` in RUNTIMES; raises ModelError when a runtime that
    was asked for by name cannot serve this model."""
    if runtime not in RUNTIMES:
        raise ModelError(f"INFERENCE_RUNTIME={runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "torch":
        return eager_forward(model, device), "torch"
    why_not = _onnx_unavailable(model, device)
    if why_not is None:
        try:
            return OnnxSSDForward(model, threads), "onnxruntime"
        except ModelError as exc:
            why_not = str(exc)
    if runtime == "onnxruntime":
        raise ModelError(f"INFERENCE_RUNTIME=onnxruntime cannot be used: {why_not}; set "
                         "INFERENCE_RUNTIME=auto or torch")
    logger.info("inference runs on torch: %s", why_not)
    return eager_forward(model, device), "torch"


def _onnx_unavailable(model: Any, device: str) -> str | None:
    if device != "cpu":
        return f"ONNX Runtime is used on the CPU only (DEVICE is {device})"
    if not supports_onnx(model):
        return f"{type(model).__name__} models run on torch (ONNX Runtime serves SSD models)"
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install onnx onnxruntime)"
    return None


class _Core(torch.nn.Module):
    """Backbone and head of an SSD as one module: images -> (box regressions, class logits)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = list(self.backbone(images).values())
        out = self.head(features)
        return out["bbox_regression"], out["cls_logits"]


class OnnxSSDForward:
    """An SSD forward whose backbone and head run in ONNX Runtime."""

    def __init__(self, model: Any, threads: int) -> None:
        import onnxruntime as ort

        self.model = model
        mean = torch.tensor(model.transform.image_mean)[:, None, None]
        std = torch.tensor(model.transform.image_std)[:, None, None]
        # (x / 255 - mean) / std as one multiply-add on the resized image
        self._scale, self._shift = 1.0 / (255.0 * std), -mean / std
        self._core = _Core(model).eval()  # the exporter restores the mode it finds
        size = model.transform.fixed_size or (320, 320)
        sample = torch.rand((1, 3, *size), generator=torch.Generator().manual_seed(0))
        try:
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), \
                    tempfile.TemporaryDirectory(prefix="mlassist-onnx-") as tmp:
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
                path = Path(tmp) / "detector.onnx"
                torch.onnx.export(self._core, (sample,), path, dynamo=False,
                                  opset_version=OPSET, input_names=["images"],
                                  output_names=["bbox_regression", "cls_logits"],
                                  dynamic_axes={"images": {0: "batch"},
                                                "bbox_regression": {0: "batch"},
                                                "cls_logits": {0: "batch"}})
                graph = path.read_bytes()
        except Exception as exc:  # noqa: BLE001 - any exporter failure means: stay on torch
            raise ModelError(f"the ONNX export failed ({type(exc).__name__}: "
                             f"{str(exc)[:200]})") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        # Idle threads must not spin: the server decodes images on the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(graph, options,
                                             providers=["CPUExecutionProvider"])
        self._anchors: dict[tuple[int, ...], torch.Tensor] = {}
        self.max_difference = self._check(sample)
        if not self.max_difference <= TOLERANCE:
            raise ModelError(f"ONNX Runtime's outputs differ from torch's by "
                             f"{self.max_difference:.2g} (> {TOLERANCE:g})")

    def _head(self, tensors: torch.Tensor) -> dict[str, torch.Tensor]:
        regression, logits = self._session.run(None, {"images": tensors.numpy()})
        return {"bbox_regression": torch.from_numpy(regression),
                "cls_logits": torch.from_numpy(logits)}

    def _check(self, sample: torch.Tensor) -> float:
        """Largest difference from torch: in the prepared input of an odd-sized image, and in
        the head outputs."""
        generator = torch.Generator().manual_seed(1)
        image = torch.randint(0, 256, (3, 237, 411), dtype=torch.uint8, generator=generator)
        with torch.inference_mode():
            regression, logits = self._core(sample)
            expected = self.model.transform([image.float().div(255.0)])[0].tensors
            prepared = self._prepare([image]).tensors
        ours = self._head(sample)
        return max(float((prepared - expected).abs().max()),
                   float((ours["bbox_regression"] - regression).abs().max()),
                   float((ours["cls_logits"] - logits).abs().max()))

    def _anchors_for(self, image_list: Any) -> list[torch.Tensor]:
        """Anchors depend only on the padded input size: computed once per size, with the
        eager backbone (the anchor generator reads the feature map shapes)."""
        from torchvision.models.detection.image_list import ImageList

        shape = tuple(image_list.tensors.shape[-2:])
        if shape not in self._anchors:
            one = ImageList(image_list.tensors[:1], image_list.image_sizes[:1])
            features = list(self.model.backbone(one.tensors).values())
            self._anchors[shape] = self.model.anchor_generator(one, features)[0]
        anchors: torch.Tensor = self._anchors[shape]
        return [anchors] * len(image_list.image_sizes)

    def _prepare(self, images: list[torch.Tensor]) -> Any:
        """The model's transform, cheaper: resize the uint8 image's values first, then scale
        and normalize the small result once. Resizing is linear, so this is the transform's
        normalize-then-resize up to rounding (the check at load and the tests hold it to
        torch's detections)."""
        from torchvision.models.detection.image_list import ImageList

        transform = self.model.transform
        if transform.fixed_size is None:  # sizes vary per image: the transform's own way
            return transform([image.float().div_(255.0) for image in images])[0]
        height, width = transform.fixed_size[1], transform.fixed_size[0]
        batch = torch.cat([torch.nn.functional.interpolate(
            image[None].float(), size=[height, width], mode="bilinear", align_corners=False)
            for image in images])
        batch.mul_(self._scale).add_(self._shift)
        return ImageList(batch, [(height, width)] * len(images))

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        with torch.inference_mode():
            originals = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
            image_list = self._prepare(images)
            head = self._head(image_list.tensors.contiguous())
            anchors = self._anchors_for(image_list)
            detections = self.model.postprocess_detections(head, anchors,
                                                           image_list.image_sizes)
            result: list[dict[str, torch.Tensor]] = self.model.transform.postprocess(
                detections, image_list.image_sizes, originals)
            return result
