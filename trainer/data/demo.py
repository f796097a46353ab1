"""Real data sets that need no network: scikit-learn's handwritten digits, scikit-image's faces,
and crops of the photos both packages ship, as image folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.data.layout import DataError

# Written last into a folder whose data set is whole: its presence means "ours, finished".
MARKER = ".complete"


def _is_finished(folder: Path, what: str) -> bool:
    """True when FOLDER is already this program's finished output (nothing to write); False when
    it is new or empty. Anything else is refused, never written into: a user's own files there
    would be overwritten (same names) or mixed with ours, and which files are ours cannot be told
    by their names. A half-written folder of an interrupted earlier write is refused too."""
    if (folder / MARKER).is_file():
        return True
    blocker = _non_folder_on_path(folder)
    if blocker is not None:
        kind = "a file" if blocker.is_file() else "a broken link"
        raise DataError(
            f"{str(blocker)!r} is {kind}, not a folder; write the {what} to a new or empty folder"
        )
    if folder.is_dir() and any(folder.iterdir()):
        raise DataError(
            f"{str(folder)!r} is not empty and holds no finished {what} (no {MARKER} file); "
            f"write the {what} to a new or empty folder (if it holds only what an interrupted "
            f"earlier write left, delete it and run again)"
        )
    return False


def _non_folder_on_path(folder: Path) -> Path | None:
    """The first existing path of FOLDER and its parents when it is not a folder (a file, or a
    broken link), where the folders could not be made; None when that one is a folder."""
    for path in (folder, *folder.parents):
        if os.path.lexists(path):
            return None if path.is_dir() else path
    return None


def write_digits(folder: str | Path, size: int = 32) -> Path:
    """Write the 1,797 8x8 digits as size x size grayscale PNGs in FOLDER/<digit>/<n>.png.

    The 8x8 glyph is upscaled to 3/4 of the image and centred on black, like MNIST's margins.
    Skips the work when the folder is already complete; refuses a non-empty folder that is not.
    """
    from sklearn.datasets import load_digits  # a dev/demo dependency, not a runtime one

    folder = Path(folder).expanduser()
    marker = folder / MARKER
    if _is_finished(folder, "digits"):
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
    Skips the work when the folder is already complete; refuses a non-empty folder that is not.
    """
    from skimage.data import lfw_subset  # a dev dependency, for the accuracy table

    folder = Path(folder).expanduser()
    marker = folder / MARKER
    if _is_finished(folder, "faces"):
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


PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "hubble_deep_field")
PHOTOS += ("immunohistochemistry", "retina", "rocket")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def _photos() -> dict[str, np.ndarray]:
    """The 10 bundled real photos (RGB uint8), by name: 8 of scikit-image, 2 of scikit-learn."""
    from skimage import data  # a dev dependency, for the accuracy table
    from sklearn.datasets import load_sample_image

    photos = {name: getattr(data, name)() for name in PHOTOS}
    photos |= {name.removesuffix(".jpg"): load_sample_image(name) for name in SKLEARN_PHOTOS}
    return {k: np.stack([v] * 3, axis=-1) if v.ndim == 2 else v for k, v in photos.items()}


def write_photo_crops(folder: str | Path, per_class: int = 100, short_side: int = 128) -> Path:
    """Which photo is this crop from? FOLDER/<photo>/<n>.jpg: `per_class` random crops of each of
    10 bundled real photos, of varied shape (width/height log-uniform in [0.4, 2.5]) and size
    (2% to 12% of the photo's area), saved with the shorter side `short_side` px (JPEG q90).

    Non-square on purpose: a pipeline that trains on the center square only never sees the rest.
    Crops of one photo overlap, so a test crop can share pixels with training crops (it is a
    benchmark of input pipelines and recipes, not of generalization to new photos).
    Skips the work when the folder is already complete; refuses a non-empty folder that is not."""
    folder = Path(folder).expanduser()
    marker = folder / MARKER
    if _is_finished(folder, "photo crops"):
        return folder
    rng = np.random.default_rng(0)
    for name, photo in _photos().items():
        h, w = photo.shape[:2]
        for i in range(per_class):
            area = h * w * np.exp(rng.uniform(np.log(0.02), np.log(0.12)))
            ratio = np.exp(rng.uniform(np.log(0.4), np.log(2.5)))
            cw = min(w, int(round(np.sqrt(area * ratio))))
            ch = min(h, int(round(np.sqrt(area / ratio))))
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = Image.fromarray(photo[top : top + ch, left : left + cw])
            scale = short_side / min(cw, ch)
            size = (round(cw * scale), round(ch * scale))
            out = folder / name / f"{i:03d}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            crop.resize(size, Image.Resampling.BICUBIC).save(out, quality=90)
    marker.write_text(f"{per_class * 10} images\n")
    return folder
