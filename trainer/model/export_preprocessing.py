"""What the ONNX model of `trainer export --with-preprocessing` computes, from one uint8 RGB image
of any size to calibrated probabilities: predict's resize, center crop and normalization, the
model and softmax(logits / T), in ops that export at opset 17 with the image's size as input.

The resize is Pillow's, which `trainer predict` uses (torchvision's Resize on a PIL image): two
separable passes, each a weighted sum with fixed-point coefficients (22 bits) rounded to uint8
(Pillow's libImaging/Resample.c). Here each pass is a float64 matrix product with the same
integer coefficients: the sums are exact integers, so the pixels equal Pillow's. Which pass
comes first changes the rounding, and Pillow changed it: always horizontal before 12.2; vertical
first for images over 100 times taller than wide from 12.2; from 13.0 whenever the height
shrinks by more than twice as many pixels as the width. The graph follows the Pillow installed
where it is exported. ONNX's own antialiased Resize (opset 18) is another filter (1 to 16 gray
levels off Pillow's on photos), and torch's TorchScript exporter cannot emit it.
Only the rows and columns of the center crop are computed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image
from torch import Tensor, nn

from trainer.data.transforms import Preprocessing, eval_transform

# Pillow's fixed-point coefficients: 32-bit sums of 8-bit pixels, 2 bits of headroom.
PRECISION_BITS = 32 - 8 - 2
# Half-width of each filter in input pixels at scale 1 (Pillow's BILINEAR and BICUBIC).
FILTER_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}
BICUBIC_A = -0.5  # Pillow's cubic (torch's own bicubic uses -0.75)
# The installed Pillow's (major, minor): which pass it runs first.
PILLOW = tuple(int(part) for part in PIL.__version__.split(".")[:2])
# Max |probability difference| allowed between the export and trainer predict on real image
# files: the pixels are Pillow's exactly, what is left is float32 arithmetic.
PROBABILITY_ATOL = 1e-4


def _filter(t: Tensor, interpolation: str) -> Tensor:
    """Pillow's filter weight at distance t (float64), evaluated in its operation order so the
    doubles match."""
    x = t.abs()
    zero = torch.zeros_like(x)
    if interpolation == "bilinear":
        return torch.where(x < 1.0, 1.0 - x, zero)
    a = BICUBIC_A
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, zero))


def resample_weights(
    in_size: Tensor, out_size: Tensor, first: Tensor, count: int, interpolation: str
) -> Tensor:
    """(count, in_size) float64 integer coefficients of Pillow's resample from in_size to
    out_size pixels, for output pixels first .. first + count - 1 (the crop). Sizes are int64
    tensors of shape (1,): 0-dim ones would be exported as float32 scalars."""
    scale = in_size.double() / out_size.double()
    filterscale = scale.clamp(min=1.0)  # downscaling widens the filter: the antialiasing
    support = FILTER_SUPPORT[interpolation] * filterscale
    center = ((first + torch.arange(count)).double() + 0.5) * scale  # (count,)
    lo = torch.floor(center - support + 0.5)  # window [lo, hi) as Pillow rounds it
    hi = torch.floor(center + support + 0.5)
    i = torch.arange(in_size[0]).double()[None]  # (1, in_size)
    w = _filter((i - center[:, None] + 0.5) * (1.0 / filterscale), interpolation)
    w = torch.where((i >= lo[:, None]) & (i < hi[:, None]), w, torch.zeros_like(w))
    w = w / w.sum(dim=1, keepdim=True)
    # Pillow rounds half away from zero: (int)(w * 2^22 +- 0.5)
    return torch.sign(w) * torch.floor(w.abs() * 2.0**PRECISION_BITS + 0.5)


def _clip8(sums: Tensor) -> Tensor:
    """Pillow's clip8: (sum + 2^21) >> 22, clipped to 0..255 (still float64, exact)."""
    half = 2.0 ** (PRECISION_BITS - 1)
    return torch.floor((sums + half) * 2.0**-PRECISION_BITS).clamp(0.0, 255.0)


def resized_size(height: Tensor, width: Tensor, short: int) -> tuple[Tensor, Tensor]:
    """torchvision's Resize(int) rule: the shorter side to `short`, the longer one to
    floor(short * long / shorter) (int64 arithmetic, equal to its Python float division)."""
    portrait = width <= height
    s = torch.full_like(height, short)
    new_h = torch.where(portrait, torch.div(short * height, width, rounding_mode="floor"), s)
    new_w = torch.where(portrait, s, torch.div(short * width, height, rounding_mode="floor"))
    return new_h, new_w


def crop_start(length: Tensor, crop: int) -> Tensor:
    """data.transforms.center_crop_offset in tensor ops: round((length - crop) / 2), half to
    even as Python's round and ONNX Round do."""
    return torch.round((length - crop).double() / 2.0).long()


def _vertical_first(height: Tensor, width: Tensor, new_h: Tensor, new_w: Tensor) -> Tensor | None:
    """Whether the installed Pillow resamples the columns first (a bool tensor), or None when it
    never does (before 12.2)."""
    shrink_h, shrink_w = height - new_h, width - new_w
    if PILLOW >= (13, 0):  # libImaging/Resample.c: ImagingResampleInner
        return (shrink_h > 0) & (shrink_h > 2 * shrink_w)
    if PILLOW >= (12, 2):  # Image.resize: "Resize tall images vertically first"
        return (height > 100 * width) & (shrink_h > 0)
    return None


def pillow_resize_crop(image: Tensor, pre: Preprocessing) -> Tensor:
    """(H, W, 3) uint8 -> (3, S, S) float64 holding eval_transform's uint8 pixels (its Resize
    and CenterCrop on the PIL image), equal to them."""
    shape = torch._shape_as_tensor(image)  # traced: the exported graph reads H and W
    height, width = shape[0:1], shape[1:2]  # (1,)-shaped: see resample_weights
    new_h, new_w = resized_size(height, width, pre.resize_size)
    size, how = pre.image_size, pre.interpolation
    kx = resample_weights(width, new_w, crop_start(new_w, size), size, how).T  # (W, S)
    ky = resample_weights(height, new_h, crop_start(new_h, size), size, how)  # (S, H)
    x = image.permute(2, 0, 1).double()  # (3, H, W)
    pixels = _clip8(ky @ _clip8(x @ kx))  # rows first
    vertical_first = _vertical_first(height, width, new_h, new_w)
    if vertical_first is not None:  # both orders computed (a traced graph cannot branch)
        pixels = torch.where(vertical_first, _clip8(_clip8(ky @ x) @ kx), pixels)
    return pixels


class WithPreprocessing(nn.Module):
    """(1, H, W, 3) uint8 RGB -> (1, C) probabilities: predict's whole path in one module."""

    def __init__(self, model: nn.Module, pre: Preprocessing, temperature: float):
        super().__init__()
        self.model, self.pre, self.temperature = model, pre, temperature
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(3, 1, 1))
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(3, 1, 1))

    def pixel_values(self, image: Tensor) -> Tensor:
        """(1, 3, S, S) float32: the model's input, equal to eval_transform's."""
        # as ToDtype(scale=True) then Normalize: x * (1/255), then (x - mean) / std
        x = pillow_resize_crop(image[0], self.pre).float() * (1.0 / 255.0)
        return ((x - self.mean) / self.std)[None]

    def forward(self, image: Tensor) -> Tensor:
        logits = self.model(self.pixel_values(image))
        return (logits.float() / self.temperature).softmax(dim=-1)


def example_image(pre: Preprocessing) -> Tensor:
    """What the export traces with: any size gives the same graph (no branch depends on it)."""
    return torch.zeros(1, pre.resize_size + 3, pre.resize_size + 5, 3, dtype=torch.uint8)


def preprocessing_parity(
    model: torch.nn.Module,
    pre: Preprocessing,
    t: float,
    images: list[np.ndarray],
    session: Any,
) -> dict[str, Any]:
    """The ONNX model's probabilities against predict's (eval_transform on the PIL image, the
    model, softmax(logits / T)) on each image: the max |difference|, and whether the top-1
    labels agree wherever predict's top two are more than PROBABILITY_ATOL apart (closer
    ones may swap within the tolerance)."""
    transform = eval_transform(pre)
    diffs, agree, checked = [], True, 0
    for image in images:
        logits = model(transform(Image.fromarray(image))[None])
        reference = (logits.float() / t).softmax(dim=-1)[0].numpy()
        exported = session.run(None, {"image": image[None]})[0][0]
        diffs.append(float(np.abs(exported - reference).max()))
        top2 = np.sort(reference)[-2:]
        if len(reference) < 2 or top2[1] - top2[0] > PROBABILITY_ATOL:
            checked += 1
            agree &= bool(exported.argmax() == reference.argmax())
    sizes = sorted({image.shape[:2] for image in images})
    return {
        "max_abs_diff": max(diffs),
        "atol": PROBABILITY_ATOL,
        "inputs": f"{len(images)} real image files ({len(sizes)} sizes)",
        "compared_with": "trainer predict: load_rgb, eval_transform, the model, softmax(logits/T)",
        "top1_checked": checked,
        "same_top1": agree,
    }
