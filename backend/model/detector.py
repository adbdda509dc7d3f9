"""The loaded detector: one per process, batched inference, one version string.

`ModelSpec` says which model the settings ask for and what its version is, without importing
torch, so `/setup` can answer at once. `DetectorHolder` loads the model in a background thread
when the server starts; requests wait for it with a bound.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.core.errors import ModelError
from backend.model.architectures import (
    build_coco_model,
    build_untrained_model,
    coco_class_names,
    has_coco_weights,
)
from backend.model.backbones import build_imagenet_model, imagenet_weights_path
from backend.model.checkpoint import file_digest, load_checkpoint

if TYPE_CHECKING:
    from PIL import Image

    from backend.core.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """Which weights to load and the version string stamped on every prediction."""

    arch: str
    weights: str  # "coco", "imagenet", "none" or a checkpoint path
    fallback: str  # "error" or "none"
    version: str

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelSpec:
        weights, arch = settings.model_weights, settings.model_arch
        missing = (weights == "coco" and not has_coco_weights(arch)) or (
            weights == "imagenet" and not imagenet_weights_path(arch).is_file())
        if missing and settings.model_weights_fallback == "none":
            # Decided here, not at load time, so /setup never announces a version that the
            # predictions will not carry.
            logger.warning("%s weights for %s are not in the torch cache; "
                           "MODEL_WEIGHTS_FALLBACK=none: serving an untrained model",
                           weights, arch)
            weights = "none"
        if weights in ("coco", "imagenet", "none"):
            version = f"{arch}-{'untrained' if weights == 'none' else weights}"
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise ModelError(f"MODEL_WEIGHTS={weights} is neither coco, imagenet, none nor "
                                 "an existing checkpoint file")
            version = f"{path.stem}-{file_digest(path)[:10]}"
        return cls(settings.model_arch, weights, settings.model_weights_fallback, version)


@dataclass(frozen=True)
class Detections:
    """One image's detections: xyxy pixel boxes, scores, model class indices (best first)."""

    boxes: np.ndarray  # float32 [N, 4]
    scores: np.ndarray  # float32 [N]
    labels: np.ndarray  # int64 [N]


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"DEVICE={name} but torch sees no CUDA device; set DEVICE=cpu")
    return name


class Detector:
    """A torchvision detector in eval mode with its class names and version."""

    def __init__(self, model: Any, class_names: list[str], version: str, device: str,
                 thresholds: dict[str, float | None] | None = None, runtime: str = "torch",
                 threads: int = 0) -> None:
        from backend.model.runtime import choose_forward

        self.model = model.eval().to(device)
        self.class_names = class_names
        self.version = version
        self.device = device
        # `runtime` is what was asked for (auto, onnxruntime, torch); self.runtime what runs.
        self._forward, self.runtime = choose_forward(self.model, runtime, device, threads)
        # Calibrated per-class thresholds of a trained version (None for a class = it cannot
        # reach the target precision); None when the model was never calibrated.
        self.thresholds = thresholds
        self._lock = threading.Lock()

    def predict(self, images: list[Image.Image], batch_size: int = 4) -> list[Detections]:
        """Detections for each image, in order; forwards are serialized per process."""
        import torch
        from torchvision.transforms.functional import pil_to_tensor

        results: list[Detections] = []
        for start in range(0, len(images), batch_size):
            batch = [pil_to_tensor(image) for image in images[start:start + batch_size]]
            with self._lock, torch.inference_mode():
                outputs = self._forward(batch)
            for output in outputs:
                results.append(Detections(
                    boxes=output["boxes"].float().cpu().numpy(),
                    scores=output["scores"].float().cpu().numpy(),
                    labels=output["labels"].cpu().numpy().astype(np.int64),
                ))
        return results


def load_detector(spec: ModelSpec, device: str = "auto", threads: int = 0,
                  runtime: str = "torch") -> Detector:
    """Build the detector `spec` describes; raises ModelError with what to do."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device)
    if spec.weights in ("coco", "imagenet"):
        try:
            names = coco_class_names(spec.arch)
            # An ImageNet start has new heads: it serves (nearly) nothing until trained, but
            # it is what the first training round of a project starts from.
            model = build_coco_model(spec.arch) if spec.weights == "coco" else \
                build_imagenet_model(spec.arch, num_classes=len(names))[0]
            return Detector(model, names, spec.version, device, runtime=runtime,
                            threads=threads)
        except ModelError as exc:
            if spec.fallback != "none":
                raise
            logger.warning("%s; MODEL_WEIGHTS_FALLBACK=none: serving an untrained model", exc)
            spec = ModelSpec(spec.arch, "none", spec.fallback, f"{spec.arch}-untrained")
    if spec.weights == "none":
        names = coco_class_names(spec.arch)
        model = build_untrained_model(spec.arch, num_classes=len(names))
        return Detector(model, names, spec.version, device, runtime=runtime, threads=threads)
    return checkpoint_detector(Path(spec.weights), spec.version, device, runtime, threads)


def load_detector_model(path: Path) -> tuple[Any, list[str], dict[str, Any]]:
    """(model, class names, checkpoint) from an MLAssist checkpoint file."""
    from backend.model.architectures import build_model

    checkpoint = load_checkpoint(path)
    names = list(checkpoint["class_names"])
    model = build_model(checkpoint["arch"], num_classes=len(names))
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise ModelError(f"checkpoint {path} does not fit {checkpoint['arch']}: "
                         f"{str(exc)[:300]}") from None
    return model.eval(), names, checkpoint


def checkpoint_detector(path: Path, version: str | None, device: str, runtime: str = "torch",
                        threads: int = 0) -> Detector:
    """A Detector from a checkpoint; `version` None means the one stored in it."""
    model, names, checkpoint = load_detector_model(path)
    return Detector(model, names, version or str(checkpoint.get("model_version") or path.stem),
                    resolve_device(device), checkpoint.get("thresholds"), runtime, threads)


class DetectorHolder:
    """Loads the detector once, in the background, and hands it out when ready."""

    def __init__(self, spec: ModelSpec, device: str, threads: int,
                 runtime: str = "torch") -> None:
        self.spec = spec
        self._device = device
        self._threads = threads
        self._runtime = runtime
        self._ready = threading.Event()
        self._detector: Detector | None = None
        self._error: ModelError | None = None
        self.load_seconds: float | None = None

    def start(self) -> DetectorHolder:
        threading.Thread(target=self._load, name="detector-load", daemon=True).start()
        return self

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            self._detector = load_detector(self.spec, self._device, self._threads,
                                           self._runtime)
            self.load_seconds = time.perf_counter() - started
            logger.info("model %s loaded on %s (%s) in %.1f s", self._detector.version,
                        self._detector.device, self._detector.runtime, self.load_seconds)
        except ModelError as exc:
            self._error = exc
            logger.error("model could not be loaded: %s", exc)
        except Exception as exc:  # noqa: BLE001 - surfaced to every request that needs it
            self._error = ModelError(f"model could not be loaded: {type(exc).__name__}: {exc}")
            logger.exception("model could not be loaded")
        finally:
            self._ready.set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._detector is not None

    @property
    def version(self) -> str:
        return self._detector.version if self._detector else self.spec.version

    def peek(self) -> Detector | None:
        return self._detector

    def get(self, timeout: float) -> Detector:
        """The detector; raises ModelError if loading failed or took longer than `timeout`."""
        if not self._ready.wait(timeout):
            raise ModelError(f"model is still loading after {timeout:g} s; try again shortly")
        if self._error is not None:
            raise self._error
        if self._detector is None:
            raise ModelError("model is not loaded")
        return self._detector

    @classmethod
    def loaded(cls, detector: Detector, spec: ModelSpec) -> DetectorHolder:
        """A holder around an already-built detector (tests, benchmarks, the CLI)."""
        holder = cls(spec, detector.device, 0)
        holder._detector = detector
        holder._ready.set()
        return holder
