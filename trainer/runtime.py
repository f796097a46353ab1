"""Process-level concerns: the accelerator for one process or a launch, processes per machine,
versions and provenance of a run, progress bars, clean distributed shutdown."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trainer.progress import bar


def has_accelerator_device() -> bool:
    """CUDA (or another torch accelerator: MPS, XPU) is usable in this process."""
    acc = getattr(torch, "accelerator", None)  # torch >= 2.6
    if acc is not None and hasattr(acc, "is_available"):
        return bool(acc.is_available())
    return torch.cuda.is_available()


def make_accelerator(**kwargs: Any):
    """An Accelerator that also distributes on CPU-only machines.

    Without `cpu=True`, accelerate treats processes started by `accelerate launch` with a
    MULTI_GPU config on a machine without CUDA as independent single processes; with it they
    form one gloo process group (DistributedType.MULTI_CPU).
    """
    from accelerate import Accelerator

    return Accelerator(cpu=not has_accelerator_device(), **kwargs)


def local_world_size(accelerator) -> int:
    """Processes on this machine (torchrun sets LOCAL_WORLD_SIZE); they share its CPU cores."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))


def package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_sha() -> str | None:
    """The commit of the trainer source in use, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(world_size: int, device: torch.device) -> dict[str, Any]:
    """What produced a run: versions, commit, machine; stored in RUN_DIR/env.json."""
    from trainer import secrets

    # The command with its secrets as "***"; scrubbed in sys.argv itself, for W&B and any other
    # reader after us.
    secrets.scrub_argv()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_sha": git_sha(),
        "versions": {
            p: package_version(p)
            for p in (
                "trainer",
                "torch",
                "torchvision",
                "accelerate",
                "datasets",
                "safetensors",
                "timm",
                "wandb",
            )
        },
        "world_size": world_size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "command": sys.argv,
    }


def progress(iterable: Iterable, desc: str, accelerator, **kwargs: Any) -> Any:
    """progress.bar on the local main process: a bar in a terminal, plain lines in a log.
    `kwargs` go to it (e.g. total= and initial= for a resumed epoch)."""
    return bar(iterable, desc, disable=not accelerator.is_local_main_process, **kwargs)


def shutdown(accelerator, barrier: bool = True) -> None:
    """End trackers, then tear the process group down while every rank is still alive.

    Leaving a gloo/NCCL group to the interpreter's exit lets its C++ threads be destroyed during
    static destruction, which aborts with "terminate called without an active exception".
    After an error no barrier is entered: the other ranks may never reach it.
    """
    if barrier:
        accelerator.wait_for_everyone()
    accelerator.end_training()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
