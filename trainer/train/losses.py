"""The training loss: cross-entropy with label smoothing, class weights, and MixUp/CutMix targets."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from trainer.config import TrainConfig


def balanced_class_weights(counts: Sequence[int]) -> torch.Tensor:
    """N / (C x count_c): each class contributes equally to the loss (scikit-learn's 'balanced')."""
    counts_t = torch.tensor(counts, dtype=torch.float32).clamp(min=1)
    return counts_t.sum() / (len(counts) * counts_t)


def batch_mixer(cfg: TrainConfig, num_classes: int) -> Callable | None:
    """(images, labels) -> (mixed images, soft targets (B, C) summing to 1); None when both are off."""
    mixers = []
    if cfg.mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
    if cfg.cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


def no_mixing(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mixer when MixUp and CutMix are off: images and (hard) targets as they are."""
    return images, labels


class Criterion:
    """Mean cross-entropy over a batch; targets are class indices (B,) or probabilities (B, C)."""

    def __init__(self, cfg: TrainConfig, class_weights: torch.Tensor | None = None):
        self.label_smoothing = cfg.label_smoothing
        self.weight = class_weights

    def to(self, device: torch.device) -> Criterion:
        if self.weight is not None:
            self.weight = self.weight.to(device)
        return self

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), targets, weight=self.weight, label_smoothing=self.label_smoothing
        )


def make_criterion(
    cfg: TrainConfig, class_counts: Sequence[int], device: torch.device
) -> Criterion:
    """The run's loss on `device`; train.class_weights=balanced weighs classes by their counts."""
    weights = balanced_class_weights(class_counts) if cfg.class_weights == "balanced" else None
    return Criterion(cfg, weights).to(device)
