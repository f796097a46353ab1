"""Loaders: the evaluation loader (every sample once, in order), the training loader (our
batch sampler, augmentation seeded per row), and batches moved to the device in the layout asked."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader

from trainer.data.sampling import EpochBatchSampler, SeededView
from trainer.data.workers import ignore_in_workers, kill_workers_at_exit


def auto_num_workers(requested: int | None, local_processes: int) -> int:
    """DataLoader workers per process: as asked, else the CPUs left per process (max 8)."""
    if requested is not None:
        return requested
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(8, cpus // max(1, local_processes) - 1))


def make_loader(ds, batch_size: int, *, workers: int, collate=None) -> DataLoader:
    """An evaluation loader: every sample once, in order."""
    return DataLoader(
        ds,
        batch_size=batch_size,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        # Ctrl-C reaches the whole process group: a worker it killed would fail the next pass.
        worker_init_fn=_worker_init(workers),
    )


def make_train_loader(
    ds,
    sampler: EpochBatchSampler,
    *,
    workers: int,
    seed: int,
    seeded: bool = True,
    pin: bool = True,
) -> DataLoader:
    """The training loader: batches from `sampler`, augmentation seeded per (epoch, row)
    (`seeded=False`: `ds` draws its own and makes whole batches, e.g. the cached pipeline's)."""
    return DataLoader(
        SeededView(ds, seed) if seeded else ds,
        batch_sampler=sampler,
        collate_fn=None if seeded else _as_batch,
        num_workers=workers,
        pin_memory=pin and torch.cuda.is_available(),  # not for batches already on the device
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init(workers),
        # Workers' base seed comes from here, not from the global RNG that a resume restores.
        generator=torch.Generator().manual_seed(seed),
    )


def stop_workers(*loaders) -> None:
    """End the persistent workers of loaders that are done, now. A loader left to the garbage
    collector in a reference cycle can have its queues cleared before its iterator's shutdown
    runs: the stop message never reaches the workers, and torch waits 5 s for each, then 5 s more
    after a SIGTERM they ignore (`ignore_in_workers`): 30 s at the end of a run inside `trainer
    bench`. torch's own exit hook ends persistent workers the same way."""
    for loader in loaders:
        loader = getattr(loader, "base_dataloader", loader)  # inside Accelerate's wrapper
        iterator = getattr(loader, "_iterator", None)  # kept by persistent workers only
        if iterator is not None:
            iterator._shutdown_workers()
            loader._iterator = None


def _as_batch(batch: dict) -> dict:
    """collate_fn of a dataset whose __getitems__ already makes the whole batch."""
    return batch


def _worker_init(workers: int):
    """The worker_init_fn of a loader with `workers` processes: they leave signals to this
    process, which therefore has to end them itself at exit."""
    if workers == 0:
        return None
    kill_workers_at_exit()
    return _init_worker


def _init_worker(worker_id: int) -> None:
    ignore_in_workers()


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


def nhwc(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Images in channels-last layout when asked (features, 2-D, pass unchanged)."""
    if channels_last and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images
