"""A real data set that needs no network: scikit-learn's handwritten digits as an image folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(folder: str | Path, size: int = 32) -> Path:
    """Write the 1,797 8x8 digits as size x size grayscale PNGs in FOLDER/<digit>/<n>.png.

    The 8x8 glyph is upscaled to 3/4 of the image and centred on black, like MNIST's margins.
    Skips the work when the folder is already complete.
    """
    from sklearn.datasets import load_digits  # a dev/demo dependency, not a runtime one

    folder = Path(folder)
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    digits = load_digits()
    inner = size * 3 // 4
    offset = (size - inner) // 2
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        glyph = Image.fromarray((pixels / 16.0 * 255).round().astype(np.uint8), "L")
        canvas = Image.new("L", (size, size), 0)
        canvas.paste(glyph.resize((inner, inner), Image.Resampling.BICUBIC), (offset, offset))
        out = folder / str(label) / f"{i:04d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(out)
    marker.write_text(f"{len(digits.target)} images\n")
    return folder


def write_lfw_faces(folder: str | Path, size: int = 32) -> Path:
    """scikit-image's bundled LFW subset as a 2-class folder: FOLDER/face/ and FOLDER/not_face/.

    200 grayscale 25x25 crops from Labeled Faces in the Wild: the first 100 are faces, the last 100
    are other patches of the same photos (skimage.data.lfw_subset). Upscaled to size x size PNGs.
    """
    from skimage.data import lfw_subset  # a dev dependency, for the accuracy table

    folder = Path(folder)
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    images = lfw_subset()
    for i, pixels in enumerate(images):
        label = "face" if i < 100 else "not_face"
        img = Image.fromarray((pixels * 255).round().astype(np.uint8), "L")
        out = folder / label / f"{i:03d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        img.resize((size, size), Image.Resampling.BICUBIC).save(out)
    marker.write_text(f"{len(images)} images\n")
    return folder
