"""Optimizers with parameter groups (head lr multiplier, layer-wise lr decay, no decay on norms and
biases), and learning-rate schedules as pure functions."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from trainer.config import OptimConfig
from trainer.model.classifier import Classifier

NORM_TYPES = (
    torch.nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    torch.nn.LayerNorm,
    torch.nn.GroupNorm,
    torch.nn.LocalResponseNorm,
)


def no_decay_names(model: torch.nn.Module) -> set[str]:
    """Parameters that take no weight decay: every bias and every normalization-layer weight."""
    names = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            if param_name == "bias" or isinstance(module, NORM_TYPES):
                names.add(f"{module_name}.{param_name}" if module_name else param_name)
    return names


def backbone_blocks(backbone: torch.nn.Module) -> list[list[str]]:
    """The backbone's parameter names grouped in blocks, from input to output.

    Top-level children are blocks; a child holding more than half of all parameters (ResNet's
    layer4, EfficientNet's and ConvNeXt's `features`, ViT's `encoder.layers`) is split into its
    own children, recursively. Parameters held directly by a module (ViT's class token and
    position embedding) form a block where they stand.
    """
    total = sum(p.numel() for p in backbone.parameters())
    blocks: list[list[str]] = []

    def visit(module: torch.nn.Module, prefix: str) -> None:
        own = [prefix + name for name, _ in module.named_parameters(recurse=False)]
        if own:
            blocks.append(own)
        for name, child in module.named_children():
            size = sum(p.numel() for p in child.parameters())
            if size == 0:
                continue
            if size > total / 2 and next(child.children(), None) is not None:
                visit(child, f"{prefix}{name}.")
            else:
                blocks.append([f"{prefix}{name}.{n}" for n, _ in child.named_parameters()])

    visit(backbone, "")
    return blocks


def backbone_depths(backbone: torch.nn.Module) -> tuple[dict[str, int], int]:
    """Depth of each backbone parameter: its block's index, 1 (input side) ... n (output side)."""
    blocks = backbone_blocks(backbone)
    return {name: i for i, block in enumerate(blocks, start=1) for name in block}, len(blocks)


def param_groups(model: Classifier, cfg: OptimConfig) -> list[dict]:
    """Trainable parameters grouped by (part, depth, decay).

    Backbone: lr x layer_decay^(n - depth) (layer-wise decay; 1.0 keeps every block at lr);
    head: lr x head_lr_mult. Biases and norm weights get weight_decay 0 when no_decay_norm_bias.
    """
    skip = no_decay_names(model) if cfg.no_decay_norm_bias else set()
    depth, n = backbone_depths(model.backbone)
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part, _, inner = name.partition(".")
        if part == "head":
            lr, level = cfg.lr * cfg.head_lr_mult, n + 1
        else:
            level = depth[inner]
            lr = cfg.lr * cfg.layer_decay ** (n - level)
        decay = name not in skip
        key = (part, level if cfg.layer_decay != 1.0 else 0, decay)
        group = groups.setdefault(
            key,
            {
                "name": part
                + (f".{level}" if key[1] and part != "head" else "")
                + ("" if decay else ".no_decay"),
                "params": [],
                "param_names": [],
                "lr": lr,
                "weight_decay": cfg.weight_decay if decay else 0.0,
            },
        )
        group["params"].append(p)
        group["param_names"].append(name)
    return list(groups.values())


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


def restore_scheduler(scheduler: LambdaLR, state: dict) -> None:
    """Load a schedule saved without its lambdas (JSON), and put its current rate back into the
    optimizer: building a LambdaLR sets the rate of step 0, which loading alone does not undo."""
    scheduler.load_state_dict({**state, "lr_lambdas": [None] * len(scheduler.lr_lambdas)})
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):
        group["lr"] = lr
