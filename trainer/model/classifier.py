"""The model: a backbone and a new head for the user's classes, and which of them trains.

Where the backbone comes from is model/backbones.py; saving and loading the trained model is
model/folder.py.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.config import ModelConfig
from trainer.data.transforms import Preprocessing
from trainer.model.backbones import build_backbone


class Classifier(nn.Module):
    """`backbone` maps images to a feature vector; `head` maps features to class logits."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # backbone features already (frozen phases train the head on cached ones)
            return self.head(x)
        return self.head(self.backbone(x))


def build_head(cfg: ModelConfig, in_features: int, num_classes: int) -> nn.Module:
    """Linear or one-hidden-layer MLP head, Xavier-initialized with zero biases."""
    dropout = [nn.Dropout(cfg.head_dropout)] if cfg.head_dropout > 0 else []
    if cfg.head == "linear":
        head = nn.Sequential(*dropout, nn.Linear(in_features, num_classes))
    else:
        head = nn.Sequential(
            nn.Linear(in_features, cfg.head_hidden),
            nn.ReLU(inplace=True),
            *dropout,
            nn.Linear(cfg.head_hidden, num_classes),
        )
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return head


def build_model(cfg: ModelConfig, num_classes: int) -> tuple[Classifier, Preprocessing]:
    """The backbone named by `cfg.name` with its weights, a fresh head, and its preprocessing."""
    backbone, dim, pre = build_backbone(cfg.name, cfg.pretrained)
    return Classifier(backbone, build_head(cfg, dim, num_classes)), pre


def set_frozen(model: Classifier, freeze: str) -> None:
    """freeze='backbone': only the head trains; 'none': everything trains."""
    for p in model.backbone.parameters():
        p.requires_grad_(freeze != "backbone")
    for p in model.head.parameters():
        p.requires_grad_(True)


def freeze_batchnorm(module: nn.Module) -> None:
    """Put BatchNorm layers in eval mode: a frozen backbone's running statistics then stay put
    (in train mode they would keep moving with no gradient step following them)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def count_trainable(model: nn.Module) -> int:
    """Parameters (elements) that get gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
