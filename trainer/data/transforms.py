"""How an image file becomes the model's input: decoding to proper RGB, the train/eval transforms
sized from the backbone's metadata, and where the eval center crop sits."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode, v2

from trainer.config import DataConfig

# Photos from phones and scanners can be larger than Pillow's default decompression-bomb limit
# (89 Mpx); allow up to ~4x that, still refusing absurd sizes that would exhaust memory.
Image.MAX_IMAGE_PIXELS = 360_000_000

# What opening and decoding a file that is no good image raises: OSError (not an image, truncated,
# missing, no permission), ValueError and SyntaxError (broken headers), and, over twice the pixel
# limit, DecompressionBombError, which is no OSError.
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input; stored in model/config.json so a model folder is self-contained."""

    image_size: int
    """Square crop side in pixels."""
    resize_size: int
    """Eval: shorter side resized to this before the center crop (image_size / crop_pct)."""
    mean: tuple[float, float, float]
    """Per-channel mean of the normalization, on 0..1 pixel values."""
    std: tuple[float, float, float]
    """Per-channel standard deviation of the normalization."""
    interpolation: str = "bilinear"
    """Resampling used for resizes: bilinear or bicubic."""

    def with_size(self, image_size: int | None) -> Preprocessing:
        """Same crop ratio and normalization at another crop size (data.image_size)."""
        if image_size is None or image_size == self.image_size:
            return self
        crop_pct = self.image_size / self.resize_size
        return dataclasses.replace(
            self, image_size=image_size, resize_size=round(image_size / crop_pct)
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            image_size=int(d["image_size"]),
            resize_size=int(d["resize_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            interpolation=d.get("interpolation", "bilinear"),
        )


IMAGENET = Preprocessing(224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def load_rgb(source: str | Path | Image.Image) -> Image.Image:
    """Open an image as 8-bit RGB the same way everywhere (training, eval, predict).

    Applies the EXIF orientation, scales 16/32-bit grayscale down instead of clipping it to
    white, composites transparency over white, and converts CMYK/palette/grayscale to RGB.
    """
    img = source if isinstance(source, Image.Image) else Image.open(source)
    img = ImageOps.exif_transpose(img) or img
    if img.mode.startswith("I"):
        # 16-bit (or 32-bit int) grayscale: map 0..65535 to 0..255. convert("L") would clip
        # every value above 255 to white. 'I' images holding 8-bit values are kept as they are.
        arr = np.asarray(img, dtype=np.float64)
        is_16bit = img.mode.startswith("I;16") or arr.max(initial=0) > 255
        arr = arr / 257.0 if is_16bit else arr
        img = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def _interp(pre: Preprocessing) -> InterpolationMode:
    return InterpolationMode(pre.interpolation)


def _to_normalized_tensor(pre: Preprocessing) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]


def train_transform(pre: Preprocessing, cfg: DataConfig) -> v2.Compose:
    """Random crop, flips and policy augmentation on the PIL image, then a normalized float
    tensor (C, H, W), then random erasing (which works on the normalized tensor)."""
    ops: list = [
        v2.RandomResizedCrop(
            pre.image_size,
            scale=(cfg.min_crop_scale, 1.0),
            interpolation=_interp(pre),
            antialias=True,
        )
    ]
    if cfg.hflip:
        ops.append(v2.RandomHorizontalFlip())
    if cfg.vflip:
        ops.append(v2.RandomVerticalFlip())
    if cfg.auto_augment == "trivial":
        ops.append(v2.TrivialAugmentWide(interpolation=_interp(pre)))
    elif cfg.auto_augment == "randaugment":
        ops.append(v2.RandAugment(interpolation=_interp(pre)))
    ops += _to_normalized_tensor(pre)
    if cfg.random_erasing > 0:
        ops.append(v2.RandomErasing(p=cfg.random_erasing, value=0))  # 0 = the mean after Normalize
    return v2.Compose(ops)


def center_crop_offset(length: int, crop: int) -> int:
    """Where the eval center crop of `crop` pixels starts along a side of `length` pixels:
    torchvision's CenterCrop rule (`eval_transform`), round((length - crop) / 2) with Python's
    round half to even. The cached and decode pipelines place their eval view by it, so it holds
    exactly the pixels of the PIL path."""
    return int(round((length - crop) / 2.0))


def eval_transform(pre: Preprocessing) -> v2.Compose:
    """Resize the shorter side to resize_size, center-crop image_size, normalize."""
    return v2.Compose(
        [
            v2.Resize(pre.resize_size, interpolation=_interp(pre), antialias=True),
            v2.CenterCrop(pre.image_size),
            *_to_normalized_tensor(pre),
        ]
    )
