"""Training and inference loops, in the manner of torchvision's references/detection.

Step-based (not epoch-based): a training round runs a fixed number of optimizer steps whatever
the number of labels, sampling images with replacement, so a round's cost is predictable and
batches always hold `batch_size` images (SSDlite's BatchNorm cannot train on one image).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.functional import pil_to_tensor

from backend.media.images import LoadedImage
from backend.model.dataset import Sample
from backend.model.evaluation import ImagePrediction, ImageTruth

logger = logging.getLogger(__name__)

GRAD_CLIP_NORM = 10.0
LOG_EVERY_STEPS = 50
IMAGENET_MEAN_FILL = (124, 116, 104)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training round (stored with the checkpoint)."""

    steps: int = 500
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # used only on CUDA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_transforms() -> v2.Compose:
    """Augmentations that keep boxes right: colour, zoom-out, horizontal flip."""
    return v2.Compose([
        v2.RandomPhotometricDistort(p=0.5),
        v2.RandomZoomOut(fill={tv_tensors.Image: IMAGENET_MEAN_FILL, "others": 0},
                         side_range=(1.0, 2.0), p=0.3),
        v2.RandomHorizontalFlip(p=0.5),
        v2.SanitizeBoundingBoxes(min_size=1.0),
        v2.ToDtype(torch.float32, scale=True),
    ])


class DetectionDataset(Dataset):
    """Loaded samples as (image tensor, torchvision target), augmented when training."""

    def __init__(self, items: Sequence[tuple[Sample, LoadedImage]], train: bool) -> None:
        self.items = list(items)
        self.transforms = train_transforms() if train else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample, loaded = self.items[index]
        image = tv_tensors.Image(pil_to_tensor(loaded.image))
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.as_tensor(sample.boxes).reshape(-1, 4),
                                              format="XYXY",
                                              canvas_size=(loaded.height, loaded.width)),
            "labels": torch.as_tensor(sample.labels, dtype=torch.int64),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        else:
            image = image.to(torch.float32) / 255.0
        return image.as_subclass(torch.Tensor), {
            "boxes": target["boxes"].as_subclass(torch.Tensor).to(torch.float32),
            "labels": target["labels"],
        }


def _collate(batch: list) -> tuple:
    return tuple(zip(*batch, strict=True))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to `min_lr_ratio` of the peak."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine


def train_steps(model: nn.Module, dataset: DetectionDataset, config: TrainConfig,
                progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Run `config.steps` optimizer steps; returns the loss curve (every 10th step)."""
    if len(dataset) == 0:
        raise ValueError("no training images")
    seed_everything(config.seed)
    device = torch.device(config.device)
    model.to(device).train()
    use_amp = config.amp and device.type == "cuda"
    sampler = RandomSampler(dataset, replacement=True,
                            num_samples=config.steps * config.batch_size,
                            generator=torch.Generator().manual_seed(config.seed))
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                        collate_fn=_collate, num_workers=0, drop_last=True)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  lambda step: lr_factor(step, config))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    losses: list[float] = []
    skipped = 0
    for step, (images, targets) in enumerate(loader):
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        with torch.autocast(device_type=device.type, enabled=use_amp):
            loss_dict = model(images, targets)
            loss = sum(loss_dict.values())
        if not torch.isfinite(loss):
            skipped += 1
            logger.warning("step %d: non-finite loss %s, step skipped", step, loss.item())
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            continue
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, GRAD_CLIP_NORM)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        value = float(loss.item())
        if step % 10 == 0 or step == config.steps - 1:
            losses.append(round(value, 4))
        if (step + 1) % LOG_EVERY_STEPS == 0 or step + 1 == config.steps:
            logger.info("step %d/%d loss %.4f lr %.2e", step + 1, config.steps, value,
                        scheduler.get_last_lr()[0])
        if progress is not None:
            progress(step + 1, config.steps, value)
    model.eval()
    return {"loss_every_10_steps": losses, "skipped_steps": skipped}


@torch.inference_mode()
def predict(model: nn.Module, images: Sequence[torch.Tensor], device: str = "cpu",
            batch_size: int = 8) -> list[ImagePrediction]:
    """Raw detections (all scores) for float CHW images in [0, 1]."""
    model.to(device).eval()
    found: list[ImagePrediction] = []
    for start in range(0, len(images), batch_size):
        batch = [image.to(device) for image in images[start:start + batch_size]]
        for output in model(batch):
            found.append(ImagePrediction(output["boxes"].float().cpu().numpy(),
                                         output["scores"].float().cpu().numpy(),
                                         output["labels"].cpu().numpy()))
    return found


def evaluation_set(items: Sequence[tuple[Sample, LoadedImage]]
                   ) -> tuple[list[torch.Tensor], list[ImageTruth]]:
    """Validation images as tensors and their ground truth."""
    dataset = DetectionDataset(items, train=False)
    images, truths = [], []
    for index, (sample, loaded) in enumerate(items):
        image, _ = dataset[index]
        images.append(image)
        truths.append(ImageTruth(sample.boxes, sample.labels, loaded.width, loaded.height))
    return images, truths


def transfer_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
    """Load every tensor whose name and shape match; class-count-dependent head layers keep
    their fresh initialisation (how a model is re-headed when the label set changes)."""
    own = model.state_dict()
    matched = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    own.update(matched)
    model.load_state_dict(own)
    return {"loaded": len(matched), "fresh": len(own) - len(matched)}
