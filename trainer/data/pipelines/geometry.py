"""Where an image sits in the cached and decode pipelines: its window, its eval crop, its
training crops.

An image is resized so its shorter side is S (the eval resize, the same call as the PIL eval
transform) and kept whole up to MAX_ASPECT x S along its longer side: the window. Training
crops follow RandomResizedCrop's rule over the whole window, as the PIL path's crops cover the
whole image; the eval view is the center crop of image_size, placed so that it holds exactly the
pixels of the PIL eval path. A window is stored landscape (portrait ones transposed), so a cache
row is S x L for the widest window L of the data set (S x S for square images).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image, ImageOps

from trainer.data.transforms import UNREADABLE, center_crop_offset

# Windows keep up to 3:2 of an image: all of a 4:3 or 3:2 photo, 84% of a 16:9 one. Wider
# would cost cache space (S x 1.5S bytes per image at most) for crops that rarely reach there.
MAX_ASPECT = 1.5


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) after resizing the shorter side to `size`: torchvision's rule (the longer side
    truncated, not rounded), so the window has the shape of the PIL eval path's image."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


@dataclass(frozen=True)
class Window:
    """The stored part of an image resized to shorter side S, in the image's own orientation."""

    height: int
    width: int
    top: int  # where the window starts in the resized image
    left: int
    eval_top: int  # the eval crop's top-left corner inside the window
    eval_left: int

    @property
    def transposed(self) -> bool:
        """Stored transposed (portrait windows), so that every row is S x (longer side)."""
        return self.height > self.width

    def stored_shape(self) -> tuple[int, int]:
        return (self.width, self.height) if self.transposed else (self.height, self.width)

    def row(self) -> tuple[int, int, int, int]:
        """(height, width, eval_top, eval_left): what a cache keeps per image."""
        return (self.height, self.width, self.eval_top, self.eval_left)


def window(height: int, width: int, size: int, crop: int, longest: int | None = None) -> Window:
    """The window of a `height` x `width` resized image (shorter side `size`) whose longer side
    is at most `longest` (default MAX_ASPECT x size), placed so that its center crop of `crop`
    is the whole image's."""
    longest = longest or math.floor(size * MAX_ASPECT)
    h, w = min(height, longest), min(width, longest)
    top = min(max(center_crop_offset(height, crop) - center_crop_offset(h, crop), 0), height - h)
    left = min(max(center_crop_offset(width, crop) - center_crop_offset(w, crop), 0), width - w)
    return Window(
        h,
        w,
        top,
        left,
        center_crop_offset(height, crop) - top,
        center_crop_offset(width, crop) - left,
    )


def file_window(path: str, size: int, crop: int) -> Window:
    """The window of an image file from its header alone (EXIF orientation applied): the
    decode pipeline draws its crops from it before the image is decoded. A file whose header
    does not read, or that is over the pixel limit, gets the square (its decode then says what
    is wrong: this runs before the bad-file check has judged the file)."""
    try:
        with warnings.catch_warnings():
            # Over the limit Pillow warns (up to twice it) or raises DecompressionBombError,
            # which is no OSError: both are the decode's to report, not a crash or a log line.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if img.getexif().get(ImageOps.ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):
                    w, h = h, w
    except (*UNREADABLE, Image.DecompressionBombWarning):
        w = h = size
    return window(*resized_size(h, w, size), size, crop)


def store(image, win: Window):
    """An H x W x C resized image (array or tensor) -> its window as stored (transposed when
    portrait)."""
    part = image[win.top : win.top + win.height, win.left : win.left + win.width]
    return part.swapaxes(0, 1) if win.transposed else part


def eval_crop(stored, geometry: Sequence[int], crop: int):
    """The eval view (crop x crop x C, the image's own orientation) of a stored window (padded
    rows are fine) with `geometry` = Window.row()."""
    height, width, top, left = geometry
    if height > width:  # stored transposed
        return stored[left : left + crop, top : top + crop].swapaxes(0, 1)
    return stored[top : top + crop, left : left + crop]


def crop_box(
    g: torch.Generator, height: int, width: int, min_scale: float
) -> tuple[float, float, float, float]:
    """RandomResizedCrop's box (x1, y1, x2, y2) inside a height x width window (torchvision's
    rule: area fraction in [min_scale, 1], aspect ratio in [3/4, 4/3], 10 tries, then the
    central crop of the nearest allowed aspect ratio)."""
    area = height * width
    log_lo, log_hi = math.log(3 / 4), math.log(4 / 3)
    for _ in range(10):
        target = area * torch.empty(1).uniform_(min_scale, 1.0, generator=g).item()
        ratio = math.exp(torch.empty(1).uniform_(log_lo, log_hi, generator=g).item())
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=g))
            left = int(torch.randint(0, width - w + 1, (1,), generator=g))
            return (left, top, left + w, top + h)
    w, h = width, height
    if width / height < 3 / 4:
        h = int(round(w / (3 / 4)))
    elif width / height > 4 / 3:
        w = int(round(h * (4 / 3)))
    top, left = (height - h) // 2, (width - w) // 2
    return (left, top, left + w, top + h)


def stored_boxes(boxes: torch.Tensor, transposed: torch.Tensor) -> torch.Tensor:
    """Boxes (x1, y1, x2, y2) in the images' own orientation -> in the stored rows' (x and y
    swapped for the transposed rows)."""
    swapped = boxes[:, [1, 0, 3, 2]]
    return torch.where(transposed.view(-1, 1), swapped, boxes)
