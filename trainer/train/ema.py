"""Exponential moving average of model weights, evaluated beside the trained weights.

`make_ema` gives a ModelEMA when train.ema_decay is set, else a NoEMA that does nothing, so the
loop updates, validates and checkpoints "the EMA" without asking whether there is one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from trainer.config import TrainConfig


class ModelEMA:
    """ema = d x ema + (1 - d) x weights after every optimizer update.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates, so a short run is
    not dominated by the random initial weights. Floating-point buffers (BatchNorm statistics) are
    averaged like the weights (as timm does), integer ones copied.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        self.updates += 1
        own = self.module.state_dict()
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                own[name].mul_(d).add_(value.detach(), alpha=1 - d)
            else:
                own[name].copy_(value)

    @torch.no_grad()
    def sync(self, accelerator) -> None:
        """Make every rank hold rank 0's EMA. The weights agree already (DDP), but BatchNorm
        statistics are updated per rank between DDP's buffer broadcasts."""
        if accelerator.num_processes > 1:
            for tensor in self.module.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)

    def validate(self, accelerator, evaluate: Callable[[nn.Module], dict]) -> dict:
        """`evaluate` of the EMA weights, rank 0's on every rank (the copy selection would save)."""
        self.sync(accelerator)
        return evaluate(self.module)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()


class NoEMA:
    """train.ema_decay unset: nothing averaged, evaluated or saved."""

    updates = None  # trainer_state.json's "ema_updates"
    module = None

    def update(self, model: nn.Module) -> None:
        pass

    def validate(self, accelerator, evaluate: Callable[[nn.Module], dict]) -> dict:
        return {}

    def state_dict(self) -> None:
        return None


def make_ema(
    cfg: TrainConfig, model: nn.Module, device: torch.device, saved: tuple[dict, int] | None
) -> ModelEMA | NoEMA:
    """The EMA of `model` (on `device`), continued from a checkpoint's (weights, updates)."""
    if not cfg.ema_decay:
        return NoEMA()
    ema = ModelEMA(model, cfg.ema_decay)
    ema.module.to(device)
    if saved is not None:
        ema.module.load_state_dict(saved[0])
        ema.updates = saved[1]
    return ema
