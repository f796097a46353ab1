"""One phase's parts: the model as it trains in this phase, its optimizer and schedule, and the
batches it trains and validates on.

Each phase re-prepares the model: DDP registers the parameters that require gradients when it
wraps the model, so a backbone unfrozen in phase 2 would otherwise never have its gradients
all-reduced. A phase with a frozen backbone may train its head on cached features
(trainer.data.pipelines.features) instead of images.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from trainer.config import PhaseConfig
from trainer.data.pipelines import features
from trainer.data.pipelines.base import Pipeline
from trainer.data.sampling import EpochBatchSampler
from trainer.model.classifier import count_trainable
from trainer.train import optim, settings
from trainer.train.state import PhaseState, State

if TYPE_CHECKING:
    from trainer.train.setup import Context


@dataclass
class Phase:
    """What one phase trains and how: built by start_phase(), read by every epoch of it."""

    index: int  # in train.phases
    cfg: PhaseConfig
    model: torch.nn.Module  # prepared: DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR  # stepped once per optimizer update
    sampler: EpochBatchSampler  # this process's training batches, epoch by epoch
    pipeline: Pipeline  # the run's, or its feature cache
    train_loader: Iterable[dict]
    val_loader: DataLoader | None  # prepared (sharded); None without a val split


def start_phase(ctx: Context, state: State, model: torch.nn.Module, index: int) -> Phase:
    """Phase `index` set up from `model` (the previous phase's, or the built one), with the
    optimizer and schedule of a checkpoint taken in it."""
    a, cfg = ctx.accelerator, ctx.cfg.train.phases[index]
    model = a.unwrap_model(model, keep_fp32_wrapper=False)
    settings.freeze(model, cfg)
    optimizer = optim.build_optimizer(model, cfg.optim)
    saved = state.take_phase_state(index)
    if saved is not None and saved.optimizer is not None:
        optimizer.load_state_dict(saved.optimizer)
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model, optimizer = a.prepare(model, optimizer)
    sampler = train_sampler(ctx)
    steps_per_epoch = math.ceil(len(sampler) / ctx.cfg.train.grad_accum_steps)
    scheduler = optim.build_scheduler(optimizer, cfg.optim, steps_per_epoch, cfg.epochs)
    if saved is not None:
        optim.restore_scheduler(scheduler, saved.scheduler)
    else:
        state.progress.stale_epochs = 0
    _announce(ctx, state, index, a.unwrap_model(model), saved)
    pipeline = _pipeline(ctx, cfg, a.unwrap_model(model).backbone)
    val = a.prepare(pipeline.eval_loader("val")) if "val" in ctx.index.splits else None
    train = pipeline.train_loader(sampler, ctx.cfg.augments(cfg))
    ctx.startup.lap("phase start")  # the feature cache of a frozen phase is built above
    return Phase(index, cfg, model, optimizer, scheduler, sampler, pipeline, train, val)


def train_sampler(ctx: Context) -> EpochBatchSampler:
    """This process's share of every epoch's batches (train.seed, data.sampler)."""
    a, train, items = ctx.accelerator, ctx.cfg.train, ctx.index.splits["train"]
    weights = None
    if ctx.cfg.data.sampler == "balanced":
        # Each image drawn with probability 1 / its class size: classes come equally often.
        counts = ctx.index.class_counts("train")
        weights = [1.0 / counts[label] for _, label in items]
    return EpochBatchSampler(
        len(items),
        train.batch_size,
        num_replicas=a.num_processes,
        rank=a.process_index,
        seed=train.seed,
        # Drop the ragged last batch when there is a full one: a batch of 1 breaks BatchNorm.
        drop_last=True,
        weights=weights,
    )


def _pipeline(ctx: Context, cfg: PhaseConfig, backbone: torch.nn.Module) -> Pipeline:
    """The run's pipeline, or its feature cache when the phase trains the head on features."""
    use, why = features.wanted(ctx.cfg, cfg, backbone)
    if why:
        ctx.accelerator.print(f"  {why}")
    if not use:
        return ctx.pipeline
    return features.compute(ctx.pipeline, backbone, ctx.channels_last, ctx.accelerator)


def _announce(
    ctx: Context, state: State, index: int, model: torch.nn.Module, saved: PhaseState | None
) -> None:
    phases, at = ctx.cfg.train.phases, state.position
    cfg = phases[index]
    ctx.accelerator.print(
        f"phase {index + 1}/{len(phases)} '{cfg.name}': {cfg.epochs} epochs, "
        f"freeze={cfg.freeze}, {cfg.optim.optimizer} lr {cfg.optim.lr:g} "
        f"(head x{cfg.optim.head_lr_mult:g}), {cfg.optim.scheduler} schedule, "
        f"augment {'on' if ctx.cfg.augments(cfg) else 'off'}, "
        f"{count_trainable(model):,} trainable parameters"
        + (f"; resuming at epoch {at.phase_epoch + 1}, batch {at.batch}" if saved else "")
    )
