"""Exponential moving average of model weights, evaluated beside the trained weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """ema = d x ema + (1 - d) x weights after every optimizer update.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates, so a short run is
    not dominated by the random initial weights. Buffers (BatchNorm statistics) are copied.
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
