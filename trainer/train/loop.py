"""run(cfg) -> fit() -> _train_epoch() / evaluate(): the whole training run, top to bottom.

Accelerate does devices, DDP and mixed precision. Each phase re-prepares the model: DDP
registers the parameters that require gradients when it wraps the model, so a backbone unfrozen
in phase 2 would otherwise never have its gradients all-reduced. The training loader is ours
(trainer.sampling), not accelerate's: its order, sharding and augmentation are pure functions of
(seed, epoch, position), which is what makes a resumed run equal to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    InitProcessGroupKwargs,
    gather_object,
    set_seed,
)
from torch.utils.data import DataLoader

from trainer import runtime
from trainer.config import ConfigError, PhaseConfig, RunConfig
from trainer.data import imagefolder, loaders
from trainer.data.loaders import make_loader, make_train_loader, nhwc, to_device
from trainer.data.pipelines import fastdata, features, pil
from trainer.data.sampling import EpochBatchSampler
from trainer.data.transforms import Preprocessing, eval_transform, train_transform
from trainer.errors import writing
from trainer.evaluation import plots, report
from trainer.evaluation.evaluate import evaluate, summary_of
from trainer.model import classifier
from trainer.model.safeload import load_safetensors
from trainer.train import checkpoint, losses, optim, rundir
from trainer.train.ema import ModelEMA
from trainer.train.preemption import EXIT_PREEMPTED, Preempted, StopFlag, requeue
from trainer.train.resume import Position, Resume, continue_run, prepare_run_dir
from trainer.train.tracking import Tracker, accelerate_log_with


@dataclass
class Progress:
    """Counters and best-so-far that carry across phases (and into checkpoints)."""

    metric: str = "val_accuracy"  # train.select_metric
    step: int = 0  # optimizer updates so far, all phases
    epoch: int = 0  # epochs completed, all phases
    best_score: float | None = None  # select_metric of the best epoch
    best_val_accuracy: float | None = None
    best_val_loss: float | None = None
    best_epoch: int | None = None
    stale_epochs: int = 0  # epochs without improvement in the current phase (early stopping)

    def score(self, val: dict[str, Any]) -> tuple[float, float]:
        """Larger is better: the select metric (negated for loss), then the lower loss."""
        value = val[self.metric.removeprefix("val_")]
        return (-value if self.metric == "val_loss" else value, -val["loss"])

    def improves(self, val: dict[str, Any]) -> bool:
        return self.best_score is None or self.score(val) > (self.best_score, -self.best_val_loss)

    def record_best(self, val: dict[str, Any]) -> None:
        self.best_score = self.score(val)[0]
        self.best_val_accuracy, self.best_val_loss, self.best_epoch = (
            val["accuracy"],
            val["loss"],
            self.epoch,
        )


def make_accelerator(cfg: RunConfig) -> Accelerator:
    return runtime.make_accelerator(
        mixed_precision=cfg.train.mixed_precision,  # None: the launcher's / accelerate config's
        gradient_accumulation_steps=cfg.train.grad_accum_steps,
        log_with=accelerate_log_with(cfg.tracking) or None,
        # Same shuffling on every rank from train.seed (+ epoch), so the shards partition one order.
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, data_seed=cfg.train.seed
        ),
        step_scheduler_with_optimizer=False,  # we step our per-update schedule ourselves
        dynamo_backend="inductor" if cfg.train.compile else None,  # torch.compile in prepare()
        # A dead or stuck process fails the others' collectives after this long, not never.
        kwargs_handlers=[
            InitProcessGroupKwargs(
                timeout=datetime.timedelta(seconds=cfg.train.collective_timeout_s)
            )
        ],
    )


def param_checksum(model: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes: equal on all ranks iff DDP kept them in sync.

    Buffers (BatchNorm running stats) are left out: DDP broadcasts them from rank 0 before
    each forward, so they legitimately differ right after a training step.
    """
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Run:
    """Everything one training run holds; `fit()` and `final_eval()` read top to bottom."""

    def __init__(self, cfg: RunConfig, accelerator: Accelerator, claim: rundir.Claim):
        self.cfg = cfg
        self.accelerator = accelerator
        self.print = self.accelerator.print
        self.claim = claim
        # Everything that can be checked is checked before output_dir is touched: a typo in
        # data.root or model.name must not cost the finished run that output_dir holds.
        rundir.check_placement(cfg.output_dir, cfg.data.root)
        set_seed(cfg.train.seed)  # the same initial weights on every rank
        if cfg.data.max_image_pixels:  # what the scan let through, the loader must open
            PIL.Image.MAX_IMAGE_PIXELS = cfg.data.max_image_pixels
        # The main process checks every image first; the others then read its cached verdicts,
        # so every rank leaves out the same bad files.
        with self.accelerator.main_process_first():
            self.index = imagefolder.scan(cfg.data)
        self.class_names = self.index.class_names
        with self.accelerator.main_process_first():  # one download of pretrained weights
            self.model, pre = classifier.build_model(cfg.model, len(self.class_names))
        self._open_run_dir()
        # Distinct augmentation randomness per rank from here on (the weights are already equal).
        set_seed(cfg.train.seed + accelerator.process_index)
        self.pre: Preprocessing = pre.with_size(cfg.data.image_size)
        self.datasets = {
            split: pil.to_hf_dataset(
                items,
                self.class_names,
                train_transform(self.pre, cfg.data)
                if split == "train" and cfg.data.augment
                else eval_transform(self.pre),
            )
            for split, items in self.index.splits.items()
        }
        self.workers = loaders.auto_num_workers(
            cfg.data.num_workers, runtime.local_world_size(accelerator)
        )
        self.caches, self.device_transform = self._pixel_caches()
        self.resident: fastdata.PixelCache | None = None  # the train cache in device memory
        self.class_counts = self.index.class_counts("train")
        weights = (
            losses.balanced_class_weights(self.class_counts)
            if cfg.train.class_weights == "balanced"
            else None
        )
        self.criterion = losses.Criterion(cfg.train, weights).to(accelerator.device)
        self.mixer = losses.batch_mixer(cfg.train, len(self.class_names))
        self.ema: ModelEMA | None = None
        resume_step = self.resume.state["step"] if self.resume else None
        self.tracker = Tracker(self.accelerator, self.run_dir, cfg, resume_step=resume_step)
        self.progress = Progress(metric=cfg.train.select_metric)
        self.stop = StopFlag()
        self.channels_last = (
            cfg.train.channels_last
            if cfg.train.channels_last is not None
            else accelerator.device.type == "cuda"
        )
        if self.accelerator.is_main_process:
            imagefolder.write_splits_csv(self.index, self.run_dir / "splits.csv")
            bad = getattr(self.index, "bad_files", None)
            if bad:
                imagefolder.write_bad_files_csv(self.index, self.run_dir / "bad_files.csv")
        self._describe()
        if self.resume:
            self._restore_progress(self.resume)

    def _open_run_dir(self) -> None:
        """Lock output_dir (refusing one that is not a run's or is in use), then start fresh
        or continue the run there: the first time anything in it is written or moved."""
        self.claim.acquire()
        self.run_dir, self.resume = prepare_run_dir(self.cfg, self.accelerator)
        if self.resume:
            continue_run(self.run_dir, self.resume, self.index, self.accelerator)
            self.model.load_state_dict(self.resume.payload.model)

    def _pixel_caches(self) -> tuple[dict | None, fastdata.DeviceTransform | None]:
        """The uint8 cache of every split when the cached pipeline is chosen (data.pipeline)."""
        a, cfg = self.accelerator, self.cfg
        n = sum(self.index.counts().values())
        try:
            mode, why = fastdata.choose(cfg.data, n, self.pre.resize_size)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.print(f"input: {why}")
        self.pipeline = mode
        if mode == "pil":
            return None, None
        if mode == "decode":
            sources = {
                split: fastdata.EncodedFiles([path for path, _ in items], self.pre)
                for split, items in self.index.splits.items()
            }
            return sources, fastdata.DeviceTransform(self.pre, a.device)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        caches = {}
        with a.main_process_first():  # the main process decodes; the others find it complete
            for split, items in self.index.splits.items():
                paths = [path for path, _ in items]
                say = self.print if a.is_main_process else (lambda *_: None)
                caches[split] = fastdata.build(paths, self.pre, cfg.data, cpus or 1, say=say)
        return caches, fastdata.DeviceTransform(self.pre, a.device)

    def _labels(self, split: str) -> list[int]:
        return [label for _, label in self.index.splits[split]]

    def _eval_loader(self, split: str) -> DataLoader:
        if self.caches is None:
            return make_loader(self.datasets[split], self.eval_batch_size, workers=self.workers)
        source = self.caches[split]
        if isinstance(source, fastdata.EncodedFiles):
            view = fastdata.EncodedEvalView(source, self._labels(split))
            collate = fastdata.collate_encoded
        else:
            view = fastdata.CachedEvalView(source, self._labels(split), self.pre.image_size)
            collate = None
        return make_loader(
            view, self.eval_batch_size, workers=min(self.workers, 4), collate=collate
        )

    def _describe(self) -> None:
        a, cfg = self.accelerator, self.cfg
        for note in self.index.notes:
            self.print(f"note: {note}")
        counts = ", ".join(f"{s} {n}" for s, n in self.index.counts().items())
        self.print(
            f"data: {self.index.root} ({self.index.layout}), {len(self.class_names)} classes, {counts}\n"
            f"model: {cfg.model.name} (pretrained={cfg.model.pretrained}), {cfg.model.head} head, "
            f"input {self.pre.image_size}px\n"
            f"run: {a.num_processes} process(es) on {a.device.type}, mixed_precision={a.mixed_precision}, "
            f"batch {cfg.train.batch_size}/process x {cfg.train.grad_accum_steps} accumulation, "
            f"{self.workers} loader workers/process -> {self.run_dir}"
        )

    def loaders(self) -> tuple[DataLoader, DataLoader | None]:
        a, cfg = self.accelerator, self.cfg.train
        weights = None
        if self.cfg.data.sampler == "balanced":
            # Each image drawn with probability 1 / its class size: classes come equally often.
            weights = [1.0 / self.class_counts[label] for _, label in self.index.splits["train"]]
        n = len(self.datasets["train"])
        sampler = EpochBatchSampler(
            n,
            cfg.batch_size,
            num_replicas=a.num_processes,
            rank=a.process_index,
            seed=cfg.seed,
            # Drop the ragged last batch when there is a full one: a batch of 1 breaks BatchNorm.
            drop_last=True,
            weights=weights,
        )
        if self.caches is None:
            train = make_train_loader(
                self.datasets["train"], sampler, workers=self.workers, seed=cfg.seed
            )
        else:
            cache, workers = self.caches["train"], min(self.workers, 4)
            if isinstance(cache, fastdata.PixelCache) and fastdata.keep_on_device(
                self.cfg.data, cache, self.accelerator.device
            ):
                if self.resident is None:  # copied once, kept across phases
                    self.resident = cache.to_device(self.accelerator.device)
                    self.print(
                        f"pixel cache: {cache.pixels.nbytes / 1e6:.0f} MB held on the device"
                    )
                cache, workers = self.resident, 0  # batches gathered on the device, no workers
            view = fastdata.CachedTrainView(
                cache,
                self._labels("train"),
                self.cfg.data,
                cfg.seed,
                self.pre.image_size,
            )
            resident = cache is self.resident
            train = make_train_loader(
                view, sampler, workers=workers, seed=cfg.seed, seeded=False, pin=not resident
            )
        val = self._eval_loader("val") if "val" in self.datasets else None
        return train, val

    @property
    def eval_batch_size(self) -> int:
        return self.cfg.train.eval_batch_size or 2 * self.cfg.train.batch_size

    def _sync_batchnorm(self, model: torch.nn.Module) -> torch.nn.Module:
        a = self.accelerator
        if not self.cfg.train.sync_bn or a.num_processes == 1:
            return model
        if a.device.type != "cuda":
            self.print(
                "note: train.sync_bn needs CUDA; keeping per-process BatchNorm on this device"
            )
            return model
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def fit(self) -> None:
        a, cfg = self.accelerator, self.cfg
        model = self._sync_batchnorm(self.model)
        if cfg.train.ema_decay:
            self.ema = ModelEMA(model, cfg.train.ema_decay)
            self.ema.module.to(a.device)
            if self.resume and self.resume.payload.ema is not None:
                self.ema.module.load_state_dict(self.resume.payload.ema)
                self.ema.updates = self.resume.state["ema_updates"]
        if cfg.checkpoint.enabled:
            self.stop.install()
        start = self.resume.position if self.resume else Position()
        try:
            for phase_index, phase in enumerate(cfg.train.phases):
                if phase_index >= start.phase_index:
                    at = start if phase_index == start.phase_index else Position(phase_index)
                    model = self._phase(model, phase, at)
        finally:
            self.stop.uninstall()
        self.model = a.unwrap_model(model, keep_fp32_wrapper=False)
        self.wrapped = model
        # Checked before final_eval() loads the saved best weights, which would make every rank equal.
        self.checksums = gather_object([param_checksum(self.model)])

    def _phase(self, model, phase: PhaseConfig, at: Position):
        """One phase from position `at` (its start, or where a resumed run left off)."""
        a, cfg = self.accelerator, self.cfg
        model = a.unwrap_model(model, keep_fp32_wrapper=False)
        a.free_memory()  # forget the previous phase's wrapped objects before re-preparing
        classifier.set_frozen(model, phase.freeze)
        optimizer = optim.build_optimizer(model, phase.optim)
        # The checkpoint's optimizer and schedule belong to this phase only if it was in progress.
        restore = self.resume if self.resume and at is self.resume.position else None
        if restore and restore.state["optimizer_phase"] != at.phase_index:
            restore = None
        if restore and restore.payload.optimizer is not None:
            optimizer.load_state_dict(restore.payload.optimizer)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        train_loader, val_loader = self.loaders()
        model, optimizer = a.prepare(model, optimizer)
        if val_loader is not None:
            val_loader = a.prepare(val_loader)
        steps_per_epoch = math.ceil(len(train_loader) / cfg.train.grad_accum_steps)
        scheduler = optim.build_scheduler(optimizer, phase.optim, steps_per_epoch, phase.epochs)
        if restore:
            optim.restore_scheduler(scheduler, restore.state["scheduler"])
        self.print(
            f"phase {at.phase_index + 1}/{len(cfg.train.phases)} '{phase.name}': {phase.epochs} epochs, "
            f"freeze={phase.freeze}, {phase.optim.optimizer} lr {phase.optim.lr:g} "
            f"(head x{phase.optim.head_lr_mult:g}), {phase.optim.scheduler} schedule, "
            f"{classifier.count_trainable(a.unwrap_model(model)):,} trainable parameters"
            + (f"; resuming at epoch {at.phase_epoch + 1}, batch {at.batch}" if restore else "")
        )
        cache, why = features.wanted(cfg, phase, a.unwrap_model(model).backbone)
        if why:
            self.print(f"  {why}")
        if cache:
            train_loader, val_loader = self._feature_loaders(model, train_loader.batch_sampler)
        if not restore:
            self.progress.stale_epochs = 0
        for phase_epoch in range(at.phase_epoch, phase.epochs):
            here = Position(
                at.phase_index, phase_epoch, at.batch if phase_epoch == at.phase_epoch else 0
            )
            if self._epoch(model, optimizer, scheduler, train_loader, val_loader, phase, here):
                break
        return model

    def _feature_loaders(self, model, sampler: EpochBatchSampler):
        """Backbone features of the train and val images, computed once (eval view, every
        process computes its shard and receives all); loaders that serve them."""
        a = self.accelerator
        backbone = a.unwrap_model(model).backbone
        start = time.perf_counter()
        cached = {}
        for split in ("train", "val"):
            if split not in self.datasets:
                continue
            view = pil.to_hf_dataset(
                self.index.splits[split], self.class_names, eval_transform(self.pre)
            )
            loader = a.prepare(make_loader(view, self.eval_batch_size, workers=self.workers))
            cached[split] = features.extract(
                features.Channels(backbone, self.channels_last),
                loader,
                a,
                len(view),
                f"features {split}",
            )
        train = features.FeatureLoader(*cached["train"], sampler)
        val = None
        if "val" in cached:
            val = a.prepare(DataLoader(features.FeatureSet(*cached["val"]), self.eval_batch_size))
        n = sum(len(labels) for _, labels in cached.values())
        self.print(
            f"features of {n} images computed once in {time.perf_counter() - start:.1f}s; "
            f"the head trains on them (train.feature_cache)"
        )
        return train, val

    def _phase_over(self, phase: PhaseConfig, phase_epoch: int) -> bool:
        patience = self.cfg.train.early_stopping_patience
        if patience and self.progress.stale_epochs >= patience:
            self.print(f"early stopping: {patience} epochs without a better {self.progress.metric}")
            return True
        return phase_epoch + 1 >= phase.epochs

    def _restore_progress(self, resume: Resume) -> None:
        saved = resume.state["progress"]
        self.progress = Progress(**{**saved, "metric": self.cfg.train.select_metric})
        self._pending_rank_state = resume.payload.rank_state if resume.same_world else None
        self.tracker.log(
            "resume",
            step=self.progress.step,
            epoch=self.progress.epoch,
            phase=resume.state["phase"],
            checkpoint=resume.folder.name,
            world_size=self.accelerator.num_processes,
        )

    _pending_rank_state: dict | None = None

    def _train_epoch(
        self, model, loader, optimizer, scheduler, phase: PhaseConfig, at: Position
    ) -> dict:
        """One pass over the training data from batch `at.batch`; returns mean loss and running
        accuracy (augmented). Checks for a stop signal and saves step checkpoints on the way."""
        a, p, cfg = self.accelerator, self.progress, self.cfg.train
        model.train()
        if phase.freeze == "backbone" and cfg.freeze_bn:
            classifier.freeze_batchnorm(a.unwrap_model(model).backbone)
        loss_sum = torch.zeros((), device=a.device, dtype=torch.float32)  # MPS has no float64
        correct = torch.zeros((), device=a.device, dtype=torch.long)
        seen = torch.zeros((), device=a.device, dtype=torch.long)
        clip, accum, every = (
            phase.optim.clip_grad_norm,
            cfg.grad_accum_steps,
            self.cfg.checkpoint.every_steps,
        )
        n = len(loader.batch_sampler)
        loader.batch_sampler.set_epoch(p.epoch, at.batch)
        batches = iter(loader)
        if self._pending_rank_state is not None:  # resumed: continue the interrupted RNG streams
            checkpoint.set_rng_state(self._pending_rank_state["rng"])
            if at.batch and self._pending_rank_state.get("sums"):
                loss_sum += self._pending_rank_state["sums"][0]
                correct += int(self._pending_rank_state["sums"][1])
                seen += int(self._pending_rank_state["sums"][2])
            self._pending_rank_state = None
        desc = f"{phase.name} epoch {p.epoch + 1}"
        bar = runtime.progress(batches, desc, a, total=n, initial=at.batch)
        for i, batch in enumerate(bar, start=at.batch):
            batch = to_device(batch, a.device)
            if self.device_transform is not None:
                batch = self.device_transform(batch)
            images, labels = nhwc(batch["pixel_values"], self.channels_last), batch["label"]
            targets = labels
            if self.mixer is not None:
                images, targets = self.mixer(images, labels)  # soft targets (B, C)
            # Gradients are all-reduced on the last micro-batch of each update (and of the epoch).
            sync = (i + 1) % accum == 0 or i + 1 == n
            with contextlib.nullcontext() if sync else a.no_sync(model):
                logits = model(images)
                loss = self.criterion(logits, targets)
                a.backward(loss)  # divided by grad_accum_steps
            loss_sum += loss.detach().float() * labels.numel()  # on device: no sync per step
            correct += (logits.detach().argmax(dim=1) == labels).sum()
            seen += labels.numel()
            if not sync:
                continue
            if clip:
                a.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[-1]["lr"]  # the head's rate this update used
            scheduler.step()
            p.step += 1
            if self.ema is not None:
                self.ema.update(a.unwrap_model(model))
            if p.step % self.tracker.log_every == 0:
                value = loss.item()  # CPU-GPU sync point, once per log_every updates
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
                self.tracker.log(
                    "train", step=p.step, epoch=p.epoch + 1, phase=phase.name, loss=value, lr=lr
                )
            stop = self.cfg.checkpoint.enabled and self.stop.agreed(a)
            if (stop or (every and p.step % every == 0)) and i + 1 < n:  # epoch ends save anyway
                here = Position(at.phase_index, at.phase_epoch, i + 1)
                sums = [loss_sum.item(), correct.item(), seen.item()]
                saved = self._save(model, optimizer, scheduler, phase, here, sums=sums)
                if stop:
                    raise Preempted(self.stop.signal_name, str(saved))
        totals = a.reduce(torch.stack([loss_sum, correct.float(), seen.float()]), reduction="sum")
        loss_sum, correct, seen = totals.tolist()
        return {
            "loss": loss_sum / max(seen, 1),
            "accuracy": correct / max(seen, 1),
            "samples": int(seen),
        }

    def _epoch(
        self,
        model,
        optimizer,
        scheduler,
        train_loader,
        val_loader,
        phase: PhaseConfig,
        at: Position,
    ) -> bool:
        """Train one epoch, validate, keep the best model, checkpoint; True if the phase is over."""
        a, p = self.accelerator, self.progress
        start = time.perf_counter()
        train = self._train_epoch(model, train_loader, optimizer, scheduler, phase, at)
        seconds = time.perf_counter() - start
        p.epoch += 1
        n_classes = len(self.class_names)
        cl = self.channels_last
        dt = self.device_transform
        val = evaluate(model, val_loader, a, n_classes, "val", cl, dt)[0] if val_loader else {}
        ema_val = {}
        if self.ema is not None and val:
            self.ema.sync(a)  # rank 0's copy everywhere: the one _select would save
            ema_val = evaluate(self.ema.module, val_loader, a, n_classes, "val ema", cl, dt)[0]
        values = {
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
            **(summary_of(val, "val") if val.get("samples") else {}),
            **(summary_of(ema_val, "val_ema") if ema_val.get("samples") else {}),
            "lr": optimizer.param_groups[-1]["lr"],
            "epoch_seconds": round(seconds, 3),
            "images_per_second": round(train["samples"] / seconds, 1),
        }
        self.tracker.log("epoch", step=p.step, epoch=p.epoch, phase=phase.name, **values)
        shown = (
            f"val acc {val['accuracy']:.4f} loss {val['loss']:.4f}"
            if val.get("samples")
            else "no val split"
        )
        if ema_val:
            shown += f" | ema acc {ema_val['accuracy']:.4f}"
        self.print(
            f"epoch {p.epoch} [{phase.name}] train loss {train['loss']:.4f} acc {train['accuracy']:.4f} | "
            f"{shown} | {seconds:.1f}s, {values['images_per_second']:.0f} img/s"
        )
        improved = self._select(model, val, ema_val)
        over = self._phase_over(phase, at.phase_epoch)
        if self.cfg.checkpoint.enabled:
            following = (
                Position(at.phase_index + 1)
                if over
                else Position(at.phase_index, at.phase_epoch + 1)
            )
            saved = self._save(model, optimizer, scheduler, phase, following, is_best=improved)
            if self.stop.agreed(a):
                raise Preempted(self.stop.signal_name, str(saved))
        return over

    def _save(
        self,
        model,
        optimizer,
        scheduler,
        phase: PhaseConfig,
        following: Position,
        sums: list[float] | None = None,
        is_best: bool = False,
    ) -> Path:
        """A checkpoint from which training continues at `following` (collective)."""
        a, p = self.accelerator, self.progress
        state = {
            "step": p.step,
            "epoch": p.epoch,
            "phase": phase.name,
            "progress": dataclasses.asdict(p),
            "next": dataclasses.asdict(following),
            "optimizer_phase": self.cfg.train.phases.index(phase),
            "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
            "ema_updates": self.ema.updates if self.ema is not None else None,
            "world_size": a.num_processes,
            "is_best": is_best,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        payload = checkpoint.Payload(
            trainer_state=state,
            model=a.unwrap_model(model).state_dict(),
            optimizer=optimizer.state_dict(),
            ema=self.ema.module.state_dict() if self.ema is not None else None,
            rank_state={"rng": checkpoint.rng_state(), "sums": sums},
        )
        ck = self.cfg.checkpoint
        with self.stop.saving_checkpoint():  # a second Ctrl-C now waits for the save
            saved = checkpoint.save(
                a, self.run_dir / "checkpoints", p.step, payload, ck.keep_last, ck.keep_best
            )
        self.claim.replaced()  # the run can continue on its own: an old run kept aside goes
        return saved

    def _select(self, model, val: dict, ema_val: dict) -> bool:
        """Keep the better of the trained and the EMA weights if it beats the best so far
        (without a val split: the last epoch's trained weights). True if it did."""
        a, p = self.accelerator, self.progress
        if not val.get("samples"):
            self._save_model(a.unwrap_model(model), val, "trained")
            return True
        candidates = [(val, a.unwrap_model(model), "trained")]
        if ema_val.get("samples"):
            candidates.append((ema_val, self.ema.module, "ema"))
        best_val, weights, kind = max(candidates, key=lambda c: p.score(c[0]))
        if p.improves(best_val):
            p.record_best(best_val)
            p.stale_epochs = 0
            self._save_model(weights, best_val, kind)
            return True
        p.stale_epochs += 1
        return False

    def _save_model(self, model: torch.nn.Module, val: dict, weights: str) -> None:
        a = self.accelerator
        if a.is_main_process:
            extra = {
                "selected": {
                    "epoch": self.progress.epoch,
                    "weights": weights,
                    "metric": self.progress.metric,
                    "val_accuracy": val.get("accuracy"),
                    "val_loss": val.get("loss"),
                },
                "trainer_version": runtime.package_version("trainer"),
            }
            classifier.save_model_folder(
                model, self.run_dir / "model", self.cfg.model, self.class_names, self.pre, extra
            )
        a.wait_for_everyone()

    def final_eval(self) -> tuple[str | None, dict, dict]:
        """Evaluate the best model (RUN_DIR/model) on test, or on val when there is no test split."""
        split = next((s for s in ("test", "val") if s in self.datasets), None)
        if split is None:
            return None, {}, {}
        a = self.accelerator
        best = load_safetensors(self.run_dir / "model" / "model.safetensors")
        a.unwrap_model(self.wrapped).load_state_dict(best)
        loader = a.prepare(self._eval_loader(split))
        n = len(self.class_names)
        cl, dt = self.channels_last, self.device_transform
        result, preds = evaluate(self.wrapped, loader, a, n, split, cl, dt)
        if split == "test":
            p = self.progress
            self.tracker.log(
                "test", step=p.step, epoch=p.epoch, phase="test", **summary_of(result, "test")
            )
        return split, result, preds

    def _augmented_samples(self):
        """Training images as the model saw them in epoch 1, through the pipeline in use."""
        if self.caches is None:
            return self.datasets["train"]
        view = fastdata.CachedTrainView(
            self.caches["train"],
            self._labels("train"),
            self.cfg.data,
            self.cfg.train.seed,
            self.pre.image_size,
        )
        return fastdata.Samples(view, self.device_transform)

    def write_report(self, split: str, result: dict, preds: dict) -> None:
        """RUN_DIR/report.{json,md} and RUN_DIR/plots/*.png (main process), also sent to W&B."""
        a = self.accelerator
        if a.is_main_process:
            plot_dir = self.run_dir / "plots"
            epochs = [e for e in self.tracker.events if e["event"] == "epoch"]
            written = {
                "learning_curves": plots.learning_curves(epochs, plot_dir / "learning_curves.png"),
                "training_samples": plots.training_samples(
                    self._augmented_samples(),
                    self.class_names,
                    self.pre,
                    plot_dir / "training_samples.png",
                ),
            }
            mistakes = report.confident_mistakes(preds, self.index.splits[split])
            written |= report.write_report(
                self.run_dir,
                result,
                self.class_names,
                mistakes,
                extra_plots={
                    "learning curves": "plots/learning_curves.png",
                    "training samples (after augmentation)": "plots/training_samples.png",
                },
                split=split,
                model=str(self.run_dir / "model"),
                data=str(self.index.root),
                epoch=self.progress.best_epoch,
            )
            self.tracker.log_images(written, step=self.progress.step)
        a.wait_for_everyone()

    def summarize(self, test: dict, train_seconds: float) -> dict:
        a, p = self.accelerator, self.progress
        summary = {
            "best_val_accuracy": p.best_val_accuracy,
            "best_val_loss": p.best_val_loss,
            "best_epoch": p.best_epoch,
            **summary_of(test, "test"),
            "test_per_class_accuracy": test.get("per_class_accuracy"),
            "test_confusion_matrix": test.get("confusion_matrix"),
            "class_names": self.class_names,
            "epochs": p.epoch,
            "steps": p.step,
            "phases": [ph.name for ph in self.cfg.train.phases],
            "samples": self.index.counts(),
            "train_seconds": round(train_seconds, 3),
            "world_size": a.num_processes,
            "mixed_precision": a.mixed_precision,
            "pipeline": self.pipeline,  # the input path data.pipeline chose: pil, cached, decode
            "weights_in_sync": len(set(self.checksums)) == 1,
            "model_dir": str(self.run_dir / "model"),
            "report": str(self.run_dir / "report.md"),
        }
        if a.is_main_process:
            text = json.dumps(summary, indent=2, ensure_ascii=False)
            with writing(self.run_dir / "summary.json"):
                (self.run_dir / "summary.json").write_text(text, encoding="utf-8")
        return summary


def run(cfg: RunConfig) -> dict:
    """Train, select the best epoch on val, test it, write the run folder; returns the summary.

    Stopped by SIGUSR1/SIGTERM: saves a checkpoint, requeues a Slurm job (checkpoint.requeue)
    and exits with EXIT_PREEMPTED; rerunning the same command continues from the checkpoint.
    """
    accelerator = make_accelerator(cfg)
    claim = rundir.Claim(cfg.output_dir, accelerator)
    ok = False
    try:
        r = Run(cfg, accelerator, claim)
        start = time.perf_counter()
        try:
            r.fit()
        except Preempted as e:
            _stopped(r, e)
            ok = True
            raise SystemExit(EXIT_PREEMPTED) from None
        train_seconds = time.perf_counter() - start
        split, result, preds = r.final_eval()
        if split:
            r.write_report(split, result, preds)
        test = result if split == "test" else {}
        summary = r.summarize(test, train_seconds)
        sync_cmd = r.tracker.finish()
        r.print(
            f"{done_line(summary, test, train_seconds)}\n"
            f"model: {r.run_dir / 'model'}   (trainer predict {r.run_dir / 'model'} IMAGES...)"
        )
        if sync_cmd:
            r.print(f"W&B offline run: upload it with `{sync_cmd}`")
        if not summary["weights_in_sync"]:
            print("warning: model weights differ across processes; DDP lost sync", file=sys.stderr)
        ok = True
        return summary
    except Exception as e:
        _name_rank(accelerator, e, cfg)
        raise
    finally:
        # Unlocked on every way out (also exit 75); a run that failed before its first
        # checkpoint puts back the run it was replacing.
        claim.release(succeeded=ok)
        runtime.shutdown(accelerator, barrier=ok)


def done_line(summary: dict, test: dict, train_seconds: float) -> str:
    """'done in 12.3s: best val accuracy 0.9 (epoch 3), test accuracy 0.8 on 40 images'."""
    best = (
        f"best val accuracy {summary['best_val_accuracy']:.4f} (epoch {summary['best_epoch']})"
        if summary["best_val_accuracy"] is not None
        else "no val split (the last epoch's model is kept)"
    )
    tested = (
        f"test accuracy {test['accuracy']:.4f} on {test['samples']} images"
        if test
        else "no test split"
    )
    return f"done in {train_seconds:.1f}s: {best}, {tested}"


def _stopped(r: Run, e: Preempted) -> None:
    r.tracker.finish()
    r.print(
        f"stopped by {e.signal_name} at step {r.progress.step}: checkpoint {e.checkpoint}\n"
        f"the same command continues the run (checkpoint.resume=auto)"
    )
    if r.cfg.checkpoint.requeue and r.stop.requeue_wanted and r.accelerator.is_main_process:
        requeue(say=r.print)  # SIGUSR1 only: a SIGTERM (scancel) must stay a cancel


def _name_rank(accelerator, error: Exception, cfg: RunConfig) -> None:
    """With several processes, say which one failed and, for a failed collective, why."""
    if accelerator.num_processes == 1 or isinstance(error, ConfigError):
        return  # a ConfigError is every rank's (rundir.agree): the one error line says it all
    where = (
        f"rank {accelerator.process_index} of {accelerator.num_processes} on {socket.gethostname()}"
    )
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, (RuntimeError, torch.distributed.DistError)):
        print(
            f"error on {where}: a collective failed ({text}); another process died or did not "
            f"answer within train.collective_timeout_s={cfg.train.collective_timeout_s} s; the "
            f"launcher's report names the rank that failed first",
            file=sys.stderr,
        )
    else:
        print(f"error on {where}: {type(error).__name__}: {text}", file=sys.stderr)
