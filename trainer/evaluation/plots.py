"""Headless PNG figures of a run: learning curves, confusion matrix, training samples, mistakes.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display, no global state).
Class names in any script: a font that covers them is picked from the installed ones (Noto CJK,
WenQuanYi, ... when present); names no installed font can draw are shown as `#index` and the
figure says so, instead of rendering empty boxes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, fontManager

from trainer.data.transforms import Preprocessing, load_rgb

DPI = 100
# Fonts known to cover CJK, tried before the rest of the installed fonts.
PREFERRED_FONTS = (
    "Noto Sans CJK",
    "Noto Sans SC",
    "Source Han Sans",
    "WenQuanYi",
    "Droid Sans Fallback",
    "AR PL",
)


@functools.cache
def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError):
        return frozenset()


def font_for(texts: Sequence[str]) -> FontProperties | None:
    """An installed font that has a glyph for every character of `texts`; None if there is none."""
    needed = {ord(c) for t in texts for c in t if not c.isspace()}
    fonts = sorted(
        fontManager.ttflist,
        key=lambda f: (
            f.name != "DejaVu Sans",
            not any(f.name.startswith(p) for p in PREFERRED_FONTS),
        ),
    )
    for font in fonts:
        if font.name.startswith("Last Resort"):
            continue  # matplotlib's placeholder font: "covers" everything with boxes
        if needed <= _charmap(font.fname):
            return FontProperties(
                family=[font.name]
            )  # by family: the regular face, not an italic one
    return None


def display_names(class_names: Sequence[str]) -> tuple[list[str], FontProperties | None, str]:
    """(names to draw, font, note): names no installed font can draw become '#index'."""
    font = font_for(class_names)
    if font is not None:
        return list(class_names), font, ""
    drawable = [n if font_for([n]) is not None else f"#{i}" for i, n in enumerate(class_names)]
    note = "names no installed font can draw are shown as #index\n(class_names in report.json; a CJK font such as Debian's fonts-noto-cjk draws them)"
    return drawable, font_for(drawable), note


def margins(fig: Figure, left: float, right: float, bottom: float, top: float, gap: float = 0.8):
    """Fixed margins and gap between subplots, in inches: for figures whose labels do not
    depend on the data (constrained layout measures every label first: twice the drawing time)."""
    w, h = fig.get_size_inches()
    cols = fig.axes[0].get_gridspec().ncols if fig.axes else 1
    width = (w - left - right - gap * (cols - 1)) / cols
    fig.subplots_adjust(left / w, bottom / h, 1 - right / w, 1 - top / h, wspace=gap / width)


def _save(fig: Figure, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=DPI)
    return out


def learning_curves(epochs: Sequence[dict], out: Path) -> Path:
    """Loss and accuracy per epoch, train and val, with dashed lines where a phase begins."""
    fig = Figure(figsize=(12, 4.5))
    ax_loss, ax_acc = fig.subplots(1, 2)
    margins(fig, left=0.7, right=0.2, bottom=0.6, top=0.4)
    x = [e["epoch"] for e in epochs]
    for ax, metric, title in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            ys = [e.get(f"{split}_{metric}") for e in epochs]
            if any(y is not None for y in ys):
                ax.plot(
                    x, [np.nan if y is None else y for y in ys], style, label=split, markersize=4
                )
        if metric == "loss":
            ax.set_yscale("log")  # the first epochs' loss would flatten the rest
        for prev, cur in zip(epochs, epochs[1:]):
            if cur["phase"] != prev["phase"]:
                ax.axvline(prev["epoch"] + 0.5, color="gray", linestyle="--", linewidth=1)
                ax.text(
                    prev["epoch"] + 0.55,
                    0.98,
                    cur["phase"],
                    transform=ax.get_xaxis_transform(),
                    va="top",
                    fontsize=8,
                    color="gray",
                )
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    if len({e["phase"] for e in epochs}) > 1:
        ax_acc.text(
            x[0],
            0.02,
            epochs[0]["phase"],
            transform=ax_acc.get_xaxis_transform(),
            fontsize=8,
            color="gray",
        )
    return _save(fig, out)


def confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], out: Path
) -> Path:
    """Rows: true class, columns: predicted; colour is the row share, text the count."""
    cm = np.asarray(matrix, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    names, font, note = display_names(class_names)
    n = len(names)
    side = min(30.0, max(6.0, 0.45 * n + 3))
    fig = Figure(figsize=(side, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(
        range(n),
        names,
        rotation=90 if n > 10 else 45,
        ha="right" if n <= 10 else "center",
        fontproperties=font,
    )
    ax.set_yticks(range(n), names, fontproperties=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    color = "white" if share[i, j] > 0.5 else "black"
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color, fontsize=8)
    ax.set_title(
        f"confusion matrix ({int(cm.sum())} images)" + (f"\n{note}" if note else ""), fontsize=10
    )
    return _save(fig, out)


# image_grid's cells, in pixels at DPI: the caption band above each image, then the image.
CELL_WIDTH, CAPTION_HEIGHT, IMAGE_HEIGHT, TITLE_HEIGHT = 260, 50, 240, 40


def _fit(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """`img` scaled to fit width x height, its aspect kept: small images grow by whole pixels
    (nearest, so a 32 px input stays sharp-edged), large ones shrink smoothly."""
    from PIL import Image

    h, w = img.shape[:2]
    scale = min(width / w, height / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if scale >= 1:
        return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.NEAREST))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))


def image_grid(
    images: Sequence[np.ndarray], captions: Sequence[str], out: Path, title: str, cols: int = 4
) -> Path:
    """uint8 HxWx3 images in a grid with a caption above each: one mosaic drawn once (one axes
    per image took about 1 s a grid, a cost every run paid twice)."""
    cols = max(1, min(cols, len(images)))
    rows = max(1, -(-len(images) // cols))
    cell_h = CAPTION_HEIGHT + IMAGE_HEIGHT
    width, height = cols * CELL_WIDTH, rows * cell_h
    mosaic = np.full((height, width, 3), 255, dtype=np.uint8)
    fig = Figure(figsize=(width / DPI, (height + TITLE_HEIGHT) / DPI))
    font = font_for(captions) if captions else None
    for i, (img, caption) in enumerate(zip(images, captions)):
        r, c = divmod(i, cols)
        tile = _fit(img, CELL_WIDTH - 10, IMAGE_HEIGHT - 10)
        top = r * cell_h + CAPTION_HEIGHT  # right under its caption
        left = c * CELL_WIDTH + (CELL_WIDTH - tile.shape[1]) // 2
        mosaic[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
        x, y = (c + 0.5) * CELL_WIDTH, height - r * cell_h - CAPTION_HEIGHT + 4  # from the bottom
        fig.text(x / width, y / (height + TITLE_HEIGHT), caption, ha="center", va="bottom",
                 fontsize=8, fontproperties=font)  # fmt: skip
    ax = fig.add_axes((0, 0, 1, height / (height + TITLE_HEIGHT)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    if not images:
        ax.text(width / 2, height / 2, "nothing to show", ha="center", va="center")
    fig.suptitle(title, fontsize=11, y=1 - 8 / (height + TITLE_HEIGHT), va="top")
    return _save(fig, out)


def denormalize(pixels, pre: Preprocessing) -> np.ndarray:
    """A normalized (3, H, W) tensor back to a uint8 HxWx3 image."""
    arr = pixels.numpy().transpose(1, 2, 0) * np.array(pre.std) + np.array(pre.mean)
    return (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)


def training_samples(
    dataset, class_names: Sequence[str], pre: Preprocessing, out: Path, n: int = 16, seed: int = 0
) -> Path:
    """What the model sees: random training images after augmentation, with their labels."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(dataset), size=min(n, len(dataset)), replace=False)
    names, _, _ = display_names(class_names)
    items = [dataset[int(i)] for i in picks]
    images = [denormalize(item["pixel_values"], pre) for item in items]
    captions = [names[item["label"]] for item in items]
    return image_grid(
        images, captions, out, f"training samples after augmentation ({pre.image_size} px)"
    )


def mistakes_gallery(
    mistakes: Sequence[dict], class_names: Sequence[str], out: Path, thumb: int = 160
) -> Path:
    """The most confident mistakes: each image with its true and predicted label."""
    names, _, _ = display_names(class_names)
    images, captions = [], []
    for m in mistakes:
        img = load_rgb(m["path"])
        img.thumbnail((thumb, thumb))
        images.append(np.asarray(img))
        captions.append(
            f"true {names[m['true']]}\npred {names[m['predicted']]} ({m['confidence']:.0%})"
        )
    title = (
        f"{len(mistakes)} most confident mistakes" if mistakes else "no mistakes: every image right"
    )
    return image_grid(images, captions, out, title)
