"""What the config leaves to the machine, decided in one place for the runner and the bench:
channels-last, the evaluation batch and how a phase's frozen backbone trains."""

from __future__ import annotations

import torch

from trainer.config import PhaseConfig, TrainConfig
from trainer.model.classifier import Classifier, freeze_batchnorm, set_frozen


def channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """train.channels_last, else on for CUDA (tensor cores want NHWC) and CPUs (oneDNN's NHWC
    convolutions: a ResNet-50 training step at 224 px took 0.86x the time of NCHW on the 2-core
    development machine, an EfficientNet-B0 0.34x), off elsewhere."""
    if cfg.channels_last is not None:
        return cfg.channels_last
    return device.type in ("cuda", "cpu")


def eval_batch_size(cfg: TrainConfig) -> int:
    """train.eval_batch_size, else twice the training batch (no gradients to hold)."""
    return cfg.eval_batch_size or 2 * cfg.batch_size


def freeze(model: Classifier, phase: PhaseConfig) -> None:
    """What a phase trains: the head only (freeze=backbone) or everything."""
    set_frozen(model, phase.freeze)


def train_mode(
    model: torch.nn.Module, backbone: torch.nn.Module, phase: PhaseConfig, cfg: TrainConfig
) -> None:
    """Training mode for one epoch; a frozen backbone's BatchNorm stays in eval mode when
    train.freeze_bn (its running statistics would drift with no gradient step following)."""
    model.train()
    if phase.freeze == "backbone" and cfg.freeze_bn:
        freeze_batchnorm(backbone)
