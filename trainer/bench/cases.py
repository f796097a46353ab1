"""The four cases `trainer bench` times side by side, each returning images/s:

  (a) synthetic: random tensors already on the device; the ceiling of the model itself.
  (b) the runner: `trainer.train.run.run(cfg)` on the JPEG folder, images/s from its
      metrics.jsonl (through whatever input pipeline data.pipeline picks).
  (c) plain torchvision: ImageFolder + PIL RandomResizedCrop/flip/ToTensor/Normalize +
      DataLoader with the runner's worker count, a hand-written loop.
  (d) the blog-script setting: fp32, NCHW, batch 16, no loader workers, `.item()` every batch.

(a), (c) and (d) build the model as the runner does for the phase: its freeze policy, its
optimizer, its channels_last and precision (the blog setting keeps the blog's own).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.bench.setup import PeakMemory, Setup, sync
from trainer.config import RunConfig

BLOG_BATCH_SIZE = 16  # what the blog scripts use, with num_workers=0, fp32, NCHW


@dataclass
class Case:
    """One case's result: a row of the table and an entry of the JSON's "cases"."""

    key: str
    name: str
    images_per_second: float
    peak_memory_bytes: int | None
    measured: str
    settings: dict[str, Any] = field(default_factory=dict)


def _autocast(s: Setup):
    import torch

    if s.precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if s.precision == "bf16" else torch.float16
    return torch.autocast(s.device.type, dtype=dtype)


def _model(s: Setup, *, channels_last: bool, blog: bool = False):
    """The configured model on the device, frozen as the phase says and in training mode, and
    its optimizer: the runner's (with train.freeze_bn), or the blog script's one Adam."""
    import torch

    from trainer.model import classifier
    from trainer.train import optim, settings

    torch.manual_seed(0)
    model, _ = classifier.build_model(s.cfg.model, s.num_classes)
    settings.freeze(model, s.phase)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(s.device, memory_format=fmt)
    if blog:  # what a blog script writes: one Adam over whatever requires grad
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        return model, torch.optim.Adam(trainable, lr=s.phase.optim.lr)
    settings.train_mode(model, model.backbone, s.phase, s.cfg.train)
    return model, optim.build_optimizer(model, s.phase.optim)


def _step_fn(s: Setup, model, optimizer, *, channels_last: bool, amp: bool, item: bool):
    """One training step on a (images, labels) batch; `item`: read the loss and the number
    correct back every batch, as blog scripts do (a CPU-GPU sync point per step)."""
    import torch
    import torch.nn.functional as F

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    scaler = torch.amp.GradScaler(s.device.type) if amp and s.precision == "fp16" else None
    running = {"loss": 0.0, "correct": 0}

    def step(images, labels) -> None:
        images = images.to(s.device, non_blocking=True, memory_format=fmt)
        labels = labels.to(s.device, non_blocking=True)
        with _autocast(s) if amp else contextlib.nullcontext():
            logits = model(images)
            loss = F.cross_entropy(logits.float(), labels)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if item:
            running["loss"] += loss.item() * labels.size(0)
            running["correct"] += (logits.argmax(1) == labels).sum().item()

    return step


def _timed(step: Callable, batches: Iterator, warmup: int, steps: int, device) -> float:
    """Seconds for `steps` steps after `warmup` untimed ones, the device synchronized at both ends."""
    for _ in range(warmup):
        step(*next(batches))
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    sync(device)
    return time.perf_counter() - start


def case_synthetic(s: Setup, steps: int, warmup: int) -> Case:
    """(a) Random tensors already on the device: what the model alone can do."""
    import torch

    batch = s.cfg.train.batch_size
    with PeakMemory(s.device) as peak:
        model, optimizer = _model(s, channels_last=s.channels_last)
        fmt = torch.channels_last if s.channels_last else torch.contiguous_format
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(batch, 3, s.image_size, s.image_size, generator=gen).to(
            s.device, memory_format=fmt
        )
        y = torch.randint(0, s.num_classes, (batch,), generator=gen).to(s.device)
        run = torch.compile(model) if s.compile else model
        step = _step_fn(s, run, optimizer, channels_last=s.channels_last, amp=True, item=False)
        seconds = _timed(step, itertools.repeat((x, y)), warmup, steps, s.device)
        del model, run, optimizer, step, x, y
    return Case(
        "a",
        "synthetic input on the device",
        batch * steps / seconds,
        peak.bytes,
        f"{steps} steps after {warmup} warm-up",
        {"batch_size": batch},
    )


def _image_folder_loader(s: Setup, batch: int, workers: int):
    """torchvision's ImageFolder on the training folder with the usual PIL augmentation."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(s.image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(s.mean, s.std),
        ]
    )
    ds = datasets.ImageFolder(str(s.train_dir), transform=tf)
    return DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=s.device.type == "cuda",
        drop_last=len(ds) >= batch,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )


def _forever(loader) -> Iterator:
    while True:
        yield from loader


def case_loader(s: Setup, steps: int, warmup: int, *, blog: bool) -> Case:
    """(c) plain ImageFolder + DataLoader at the runner's settings, or (d) at the blog's."""
    import torch

    batch = BLOG_BATCH_SIZE if blog else s.cfg.train.batch_size
    workers = 0 if blog else s.workers
    channels_last = False if blog else s.channels_last
    # The loader's queue (2 batches per worker) fills while warm-up steps are slow; consuming that
    # many more batches untimed keeps the timed window from starting on a full queue.
    drain = 2 * workers
    with PeakMemory(s.device) as peak:
        model, optimizer = _model(s, channels_last=channels_last, blog=blog)
        run = torch.compile(model) if (s.compile and not blog) else model
        step = _step_fn(s, run, optimizer, channels_last=channels_last, amp=not blog, item=blog)
        loader = _image_folder_loader(s, batch, workers)
        batches = _forever(loader)
        seconds = _timed(step, batches, warmup + drain, steps, s.device)
        batches.close()
        del loader, batches, model, run, optimizer, step
    if blog:
        return Case(
            "d",
            f"blog script: fp32, NCHW, batch {batch}, 0 workers, .item()",
            batch * steps / seconds,
            peak.bytes,
            f"{steps} steps after {warmup} warm-up",
            {"batch_size": batch, "workers": 0, "precision": "no", "channels_last": False},
        )
    return Case(
        "c",
        "plain ImageFolder + PIL transforms + DataLoader",
        batch * steps / seconds,
        peak.bytes,
        f"{steps} steps after {warmup}+{drain} warm-up",
        {"batch_size": batch, "workers": workers},
    )


def runner_config(s: Setup, output_dir: Path, epochs: int | None) -> RunConfig:
    """The config the runner gets: the bench's resolved precision and layout, checkpoints off,
    W&B off, one phase of `epochs` (None: the config's phases and checkpoints as they are)."""
    cfg = s.cfg
    train = dataclasses.replace(
        cfg.train,
        mixed_precision=s.precision,
        channels_last=s.channels_last,
        **({"phases": [dataclasses.replace(s.phase, epochs=epochs)]} if epochs else {}),
    )
    tracking = copy.deepcopy(cfg.tracking)
    tracking.wandb.mode = "disabled"
    return dataclasses.replace(
        cfg,
        output_dir=str(output_dir),
        overwrite=True,
        train=train,
        tracking=tracking,
        checkpoint=dataclasses.replace(cfg.checkpoint, enabled=False) if epochs else cfg.checkpoint,
    )


def pipeline_used(s: Setup, summary: dict) -> str:
    """The input pipeline the run chose (its summary's "pipeline"), as 'auto -> cached' where
    data.pipeline left the choice to the runner."""
    configured, used = s.cfg.data.pipeline, summary["pipeline"]
    return used if used == configured else f"{configured} -> {used}"


def _epoch_events(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == "epoch"]


def case_runner(s: Setup, epochs: int, workdir: Path) -> Case:
    """(b) The real runner end to end; images/s of its epochs, the first left out as warm-up."""
    from trainer.train.run import run

    run_dir = workdir / "run"
    with PeakMemory(s.device) as peak:
        summary = run(runner_config(s, run_dir, epochs))
    events = _epoch_events(run_dir)
    if not events:
        raise RuntimeError(f"the run wrote no epoch events to {run_dir / 'metrics.jsonl'}")
    timed = events[1:] if len(events) >= 2 else events
    seconds = sum(e["epoch_seconds"] for e in timed)
    images = sum(e["images_per_second"] * e["epoch_seconds"] for e in timed)
    first, last = timed[0]["epoch"], events[-1]["epoch"]
    span = f"epoch {last}" if first == last else f"epochs {first}-{last}"
    measured = (
        f"{span} of {len(events)} (epoch 1 is warm-up)"
        if len(events) >= 2
        else "epoch 1 of 1 (includes warm-up: use --epochs 2+)"
    )
    pipeline = pipeline_used(s, summary)
    return Case(
        "b",
        f"trainer end to end (data.pipeline {pipeline})",
        images / seconds,
        peak.bytes,
        measured,
        {
            "pipeline": pipeline,
            "epochs": len(events),
            "epoch_images_per_second": [e["images_per_second"] for e in events],
            "train_samples": summary.get("samples", {}).get("train"),
            "batch_size": s.cfg.train.batch_size,
            "workers": s.workers,
        },
    )
