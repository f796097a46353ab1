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
    digits = load_digits()
    marker = folder / ".complete"
    if marker.is_file():
        return folder
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
