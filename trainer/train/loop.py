"""The training loop: every phase, every epoch, every batch, from where the state says to go on.

fit() runs the phases; run_epoch() trains one epoch, validates, keeps the best model and
checkpoints; train_epoch() is the pass over the batches. The components decide their own policy
(the checkpointer when to save, the selector what to keep and when to stop early, the EMA whether
there is one); the loop calls them every time. A signal stops the run at one of two places, both
below: after an optimizer update, and after an epoch's checkpoint.
"""

from __future__ import annotations

import contextlib
import time

import torch

from trainer import runtime
from trainer.data.loaders import nhwc, stop_workers, to_device
from trainer.evaluation.evaluate import evaluate, summary_of
from trainer.train import checkpoint, settings
from trainer.train.phase import Phase, start_phase
from trainer.train.preemption import Preempted
from trainer.train.setup import Context
from trainer.train.state import Position, RunningSums, State


def fit(ctx: Context, state: State, model: torch.nn.Module) -> torch.nn.Module:
    """Train every phase from `state.position` on; returns the trained model (prepared)."""
    start = state.position
    ctx.stop.install()
    try:
        for index in range(start.phase_index, len(ctx.cfg.train.phases)):
            if index > start.phase_index:
                # Accelerate forgets the previous phase's wrapped model and optimizer before
                # start_phase prepares them again (its gc.collect costs 0.6 s: not at the start).
                ctx.accelerator.free_memory()
            phase = start_phase(ctx, state, model, index)
            model = phase.model
            at = start if index == start.phase_index else Position(index)
            for epoch in range(at.phase_epoch, phase.cfg.epochs):
                batch = at.batch if epoch == at.phase_epoch else 0
                if run_epoch(ctx, state, phase, Position(index, epoch, batch)):
                    break
            stop_workers(phase.train_loader, phase.val_loader)
    finally:
        ctx.stop.uninstall()
    return model


def run_epoch(ctx: Context, state: State, phase: Phase, at: Position) -> bool:
    """Train one epoch, validate, keep the best model, checkpoint; True if the phase is over."""
    a, p = ctx.accelerator, state.progress
    start = time.perf_counter()
    train = train_epoch(ctx, state, phase, at)
    seconds = time.perf_counter() - start
    p.epoch += 1
    val = validate(ctx, phase, phase.model, "val")
    ema_val = ctx.ema.validate(a, lambda m: validate(ctx, phase, m, "val ema")) if val else {}
    values = {
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        **(summary_of(val, "val") if val.get("samples") else {}),
        **(summary_of(ema_val, "val_ema") if ema_val.get("samples") else {}),
        "lr": phase.optimizer.param_groups[-1]["lr"],
        "epoch_seconds": round(seconds, 3),
        "images_per_second": round(train["samples"] / seconds, 1),
    }
    ctx.tracker.log("epoch", step=p.step, epoch=p.epoch, phase=phase.cfg.name, **values)
    _say_epoch(ctx, p.epoch, phase, train, val, ema_val, seconds)
    improved = ctx.selector.keep_best(p, a.unwrap_model(phase.model), ctx.ema, val, ema_val)
    over = ctx.selector.stop_early(p) or at.phase_epoch + 1 >= phase.cfg.epochs
    following = (
        Position(at.phase_index + 1) if over else Position(at.phase_index, at.phase_epoch + 1)
    )
    saved = ctx.checkpointer.at_epoch_end(p, phase, following, is_best=improved)
    if ctx.stop.agreed(a):  # a signal during the epoch: stop with the epoch's checkpoint
        raise Preempted(ctx.stop.signal_name, str(saved))
    return over


def train_epoch(ctx: Context, state: State, phase: Phase, at: Position) -> dict:
    """One pass over the training batches from batch `at.batch`; returns the mean loss and the
    running accuracy (on augmented images). Saves step checkpoints on the way."""
    a, p, model = ctx.accelerator, state.progress, phase.model
    settings.train_mode(model, a.unwrap_model(model).backbone, phase.cfg, ctx.cfg.train)
    sums = RunningSums(a.device)
    n = len(phase.sampler)
    phase.sampler.set_epoch(p.epoch, at.batch)
    batches = iter(phase.train_loader)
    resumed = state.take_rank_state()
    if resumed is not None:  # continue the interrupted epoch's RNG streams and sums
        checkpoint.set_rng_state(resumed.rng)
        if at.batch and resumed.sums:
            sums.restore(resumed.sums)
    desc = f"{phase.cfg.name} epoch {p.epoch + 1}"
    bar = runtime.progress(batches, desc, a, total=n, initial=at.batch)
    for i, batch in enumerate(bar, start=at.batch):
        batch = phase.pipeline.on_device(to_device(batch, a.device))
        labels = batch["label"]
        images, targets = ctx.mixer(nhwc(batch["pixel_values"], ctx.channels_last), labels)
        # Gradients are all-reduced on the last micro-batch of each update (and of the epoch).
        sync = (i + 1) % ctx.cfg.train.grad_accum_steps == 0 or i + 1 == n
        with contextlib.nullcontext() if sync else a.no_sync(model):
            logits = model(images)
            loss = ctx.criterion(logits, targets)
            a.backward(loss)  # divided by grad_accum_steps
        sums.add(loss, logits, labels)
        if not sync:
            continue
        lr = _update(ctx, phase)
        p.step += 1
        ctx.startup.step_done(a)
        ctx.ema.update(a.unwrap_model(model))
        if p.step % ctx.tracker.log_every == 0:
            value = loss.item()  # CPU-GPU sync point, once per log_every updates
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
            ctx.tracker.log(
                "train", step=p.step, epoch=p.epoch + 1, phase=phase.cfg.name, loss=value, lr=lr
            )
        stopping = ctx.stop.agreed(a)  # a signal: save here and stop
        if ctx.checkpointer.due(p.step, stopping) and i + 1 < n:  # the epoch's end saves anyway
            here = Position(at.phase_index, at.phase_epoch, i + 1)
            saved = ctx.checkpointer.save(p, phase, here, sums=sums.values())
            if stopping:
                raise Preempted(ctx.stop.signal_name, str(saved))
    return sums.totals(a)


def _update(ctx: Context, phase: Phase) -> float:
    """One optimizer update; returns the learning rate it used (the head's)."""
    clip = phase.cfg.optim.clip_grad_norm
    if clip:
        ctx.accelerator.clip_grad_norm_(phase.model.parameters(), clip)
    phase.optimizer.step()
    phase.optimizer.zero_grad(set_to_none=True)
    lr = phase.optimizer.param_groups[-1]["lr"]
    phase.scheduler.step()
    return lr


def validate(ctx: Context, phase: Phase, model: torch.nn.Module, desc: str) -> dict:
    """Metrics of `model` on the phase's val batches; {} without a val split."""
    if not phase.val_loader:  # no val split (or one with no batches)
        return {}
    n_classes = len(ctx.class_names)
    on_device = phase.pipeline.on_device
    return evaluate(
        model, phase.val_loader, ctx.accelerator, n_classes, desc, ctx.channels_last, on_device
    )[0]


def _say_epoch(
    ctx: Context, epoch: int, phase: Phase, train: dict, val: dict, ema_val: dict, seconds: float
) -> None:
    shown = (
        f"val acc {val['accuracy']:.4f} loss {val['loss']:.4f}"
        if val.get("samples")
        else "no val split"
    )
    if ema_val:
        shown += f" | ema acc {ema_val['accuracy']:.4f}"
    ctx.accelerator.print(
        f"epoch {epoch} [{phase.cfg.name}] train loss {train['loss']:.4f} acc {train['accuracy']:.4f} | "
        f"{shown} | {seconds:.1f}s, {round(train['samples'] / seconds, 1):.0f} img/s"
    )
