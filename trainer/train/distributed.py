"""The processes of a run: the Accelerator, keeping BatchNorm and weights in step across them,
and naming the one that failed.

Accelerate does devices, DDP and mixed precision. The training loader is ours
(trainer.data.sampling), not accelerate's: its order, sharding and augmentation are pure
functions of (seed, epoch, position), which is what makes a resumed run equal to an
uninterrupted one; accelerate only shards the evaluation loaders, in order.
"""

from __future__ import annotations

import datetime
import hashlib
import socket
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, gather_object

from trainer import runtime
from trainer.config import ConfigError, RunConfig
from trainer.train.tracking import accelerate_log_with


def make_accelerator(cfg: RunConfig) -> Accelerator:
    return runtime.make_accelerator(
        mixed_precision=cfg.train.mixed_precision,  # None: the launcher's / accelerate config's
        gradient_accumulation_steps=cfg.train.grad_accum_steps,
        log_with=accelerate_log_with(cfg.tracking) or None,
        step_scheduler_with_optimizer=False,  # we step our per-update schedule ourselves
        dynamo_backend="inductor" if cfg.train.compile else None,  # torch.compile in prepare()
        # A dead or stuck process fails the others' collectives after this long, not never.
        kwargs_handlers=[
            InitProcessGroupKwargs(
                timeout=datetime.timedelta(seconds=cfg.train.collective_timeout_s)
            )
        ],
    )


def sync_batchnorm(cfg: RunConfig, accelerator: Accelerator, model: torch.nn.Module):
    """train.sync_bn: BatchNorm statistics over every process's batch (CUDA only)."""
    if not cfg.train.sync_bn or accelerator.num_processes == 1:
        return model
    if accelerator.device.type != "cuda":
        accelerator.print(
            "note: train.sync_bn needs CUDA; keeping per-process BatchNorm on this device"
        )
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


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


def total(count: int) -> int:
    """The sum of `count` over all processes (collective)."""
    return sum(gather_object([count]))


def weights_in_sync(model: torch.nn.Module) -> bool:
    """Every process holds the same trained weights (collective)."""
    return len(set(gather_object([param_checksum(model)]))) == 1


def name_failed_rank(cfg: RunConfig, accelerator: Accelerator, error: Exception) -> None:
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
