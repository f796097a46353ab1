"""Optimizers with a head learning-rate multiplier, and learning-rate schedules as pure functions."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from trainer.config import OptimConfig
from trainer.models import Classifier


def param_groups(model: Classifier, cfg: OptimConfig) -> list[dict]:
    """Trainable backbone parameters at lr, head parameters at lr x head_lr_mult."""
    groups = [
        {
            "name": "backbone",
            "params": [p for p in model.backbone.parameters() if p.requires_grad],
            "lr": cfg.lr,
        },
        {
            "name": "head",
            "params": [p for p in model.head.parameters() if p.requires_grad],
            "lr": cfg.lr * cfg.head_lr_mult,
        },
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: Classifier, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: OptimConfig, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based) of a phase."""
    if cfg.scheduler == "constant":
        return 1.0
    if cfg.scheduler == "step":
        return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_epochs)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int, epochs: int
) -> LambdaLR:
    """Stepped once per optimizer update (not per micro-batch, not per process)."""
    total = steps_per_epoch * epochs
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch, total))
