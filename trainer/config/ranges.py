"""Where may each number of the config lie? A Range for every int and float field, by "Class.field".

The dataclasses check themselves against these (schema.check_numbers); NaN and infinities never fit.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """Where a number of the config may lie; NaN and infinities never do."""

    low: float
    high: float
    low_open: bool = False  # low itself is not allowed
    high_open: bool = False
    why: str = ""  # said after the range when the value is out of it

    def __contains__(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return math.isfinite(x) and above and below

    def describe(self, integer: bool) -> str:
        if integer:
            low = self.low + 1 if self.low_open else self.low
            high = self.high - 1 if self.high_open else self.high
            return f"an integer {int(low)}..{int(high)}"
        left, right = "<" if self.low_open else "<=", "<" if self.high_open else "<="
        return f"a number {self.low:g} {left} x {right} {self.high:g}"


SEED = Range(0, 2**32, high_open=True)  # what numpy and torch's generators accept
COUNT = Range(1, 10**6)
BATCH = Range(1, 2**20)
# Every int and float field of the config, by "Class.field": a new numeric key must be added
# here (the check fails loudly otherwise), and the unit tests feed values just outside each.
RANGES: dict[str, Range] = {
    "DataConfig.split": Range(0, 1),
    "DataConfig.split_seed": SEED,
    "DataConfig.image_size": Range(16, 4096),
    "DataConfig.num_workers": Range(0, 1024),
    "DataConfig.min_crop_scale": Range(0, 1, low_open=True),
    "DataConfig.random_erasing": Range(0, 1),
    "DataConfig.max_image_pixels": Range(1, 2**34),
    "ModelConfig.head_hidden": BATCH,
    "ModelConfig.head_dropout": Range(0, 1, high_open=True),
    "OptimConfig.lr": Range(0, 10, low_open=True),
    "OptimConfig.head_lr_mult": Range(0, 1000, low_open=True),
    "OptimConfig.weight_decay": Range(0, 10),
    "OptimConfig.momentum": Range(0, 1, high_open=True),
    "OptimConfig.warmup_epochs": Range(0, 10**6),
    "OptimConfig.step_epochs": COUNT,
    "OptimConfig.gamma": Range(0, 1, low_open=True),
    "OptimConfig.layer_decay": Range(0, 1, low_open=True),
    "OptimConfig.clip_grad_norm": Range(0, 10**6, low_open=True),
    "PhaseConfig.epochs": COUNT,
    "TrainConfig.epochs": COUNT,
    "TrainConfig.batch_size": Range(
        2,
        2**20,
        why="; BatchNorm cannot normalize a batch of one image per process. To fit memory use a "
        "smaller data.image_size, and train.grad_accum_steps=N for a larger effective batch",
    ),
    "TrainConfig.eval_batch_size": BATCH,
    "TrainConfig.grad_accum_steps": Range(1, 2**16),
    "TrainConfig.seed": SEED,
    "TrainConfig.log_every": Range(1, 10**9),
    "TrainConfig.label_smoothing": Range(0, 1, high_open=True),
    "TrainConfig.mixup_alpha": Range(0, 100),
    "TrainConfig.cutmix_alpha": Range(0, 100),
    "TrainConfig.ema_decay": Range(0, 1, low_open=True, high_open=True),
    "TrainConfig.early_stopping_patience": COUNT,
    "TrainConfig.collective_timeout_s": Range(1, 7 * 86400),
    "CheckpointConfig.every_steps": Range(0, 10**9),
    "CheckpointConfig.keep_last": COUNT,
}


def number_kind(tp: Any) -> tuple[type, bool] | None:
    """(int or float, whether null is allowed) for a numeric annotation, lists of numbers
    included; None for anything else (bool is not a number here)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        kind = number_kind(inner[0]) if len(inner) == 1 else None
        return (kind[0], True) if kind else None
    if typing.get_origin(tp) is list:
        return number_kind(args[0])
    return (tp, False) if tp in (int, float) else None
