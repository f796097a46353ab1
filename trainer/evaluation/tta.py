"""Test-time augmentation: which views of an image `--tta` scores, and one forward for all of them.

The views are crops of the square eval_transform's resize leaves (the center crop eval scores
anyway, and the four corners), plus the center mirrored only the ways training mirrored
(a mirrored digit is another digit). Their calibrated probabilities are averaged
(calibration.probabilities of (N, V, C) logits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from trainer.data.transforms import Preprocessing, center_crop_offset

VIEWS = (
    "center",
    "top_left",
    "top_right",
    "bottom_left",
    "bottom_right",
    "horizontal_mirror",
    "vertical_mirror",
)
# What a model folder saved before config.json recorded its training mirrors had: data.hflip
# and data.vflip's defaults.
DEFAULT_FLIPS = {"horizontal": True, "vertical": False}


def model_views(meta: dict[str, Any]) -> tuple[str, ...]:
    """The views `--tta` scores for a model folder (its config.json): the crops always, a mirror
    only where training showed the model mirrored images ("trained_flips")."""
    flips = meta.get("trained_flips", DEFAULT_FLIPS)
    skip = {
        name
        for name, way in (("horizontal_mirror", "horizontal"), ("vertical_mirror", "vertical"))
        if not flips.get(way, False)
    }
    return tuple(v for v in VIEWS if v not in skip)


def views_transform(
    pre: Preprocessing, views: Sequence[str] = VIEWS
) -> Callable[[Image.Image], torch.Tensor]:
    """A PIL RGB image -> (V, 3, S, S) normalized float views, in the order of `views`.

    The resize is eval_transform's (shorter side to resize_size), so "center" holds exactly
    eval_transform's pixels; the corners are image_size crops of the resize_size square at the
    resized image's center."""
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views:
        raise ValueError(f"views must be some of {VIEWS}, got {list(views)}")
    resize = v2.Resize(
        pre.resize_size, interpolation=InterpolationMode(pre.interpolation), antialias=True
    )
    to_float = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)])
    size = pre.image_size

    def transform(img: Image.Image) -> torch.Tensor:
        pixels = TF.to_image(resize(img))  # uint8 (3, H, W): crops are exact slices
        crops = _crops(pixels, pre.resize_size, size)
        return to_float(torch.stack([crops[v] for v in views]))

    return transform


def _crops(pixels: torch.Tensor, square: int, size: int) -> dict[str, torch.Tensor]:
    """Every view of VIEWS of a resized image (3, H, W), each (3, size, size)."""
    height, width = pixels.shape[-2:]
    center = TF.center_crop(pixels, [size, size])  # eval_transform's CenterCrop rule
    top, left = center_crop_offset(height, square), center_crop_offset(width, square)
    far = square - size  # the corners' offset inside the square
    corners = {
        "top_left": (top, left),
        "top_right": (top, left + far),
        "bottom_left": (top + far, left),
        "bottom_right": (top + far, left + far),
    }
    crops = {name: TF.crop(pixels, y, x, size, size) for name, (y, x) in corners.items()}
    return {
        "center": center,
        **crops,
        "horizontal_mirror": TF.horizontal_flip(center),
        "vertical_mirror": TF.vertical_flip(center),
    }


class Views(nn.Module):
    """A classifier over V views per image: (B, V, 3, S, S) -> (B, V, C) logits, one forward
    of the B*V images."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, views = images.shape[:2]
        return self.model(images.flatten(0, 1)).unflatten(0, (batch, views))
