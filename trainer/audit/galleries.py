"""What the audit's findings look like: PNG galleries of duplicate pairs side by side, suspected
mislabels with the given and the suggested label, and outliers with their reason.

Each gallery shows at most a screenful (the most important findings first) and says in its title
how many there are in all; the CSVs beside it list every one. The grid, the fonts (class names in
any script) and the image decoding are evaluation/plots.py's and data/transforms.py's, imported
when a gallery is drawn so that importing this module needs neither torch nor matplotlib.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

THUMB = 160  # pixels, the longer side of each image in a gallery
MAX_PAIRS = 12  # duplicate pairs per gallery (24 images)
MAX_TILES = 24  # suspects or outliers per gallery
NAME_CHARS = 30  # a file name longer than this is shortened in the middle


def _thumb(path: str | Path) -> np.ndarray:
    """uint8 THUMB x THUMB x 3: the image scaled to fit a white square (a small image scaled up,
    with its pixels kept sharp); grey if it cannot be read."""
    from PIL import Image

    from trainer.data.transforms import load_rgb

    square = Image.new("RGB", (THUMB, THUMB), (255, 255, 255))
    try:
        img = load_rgb(path)
    except (OSError, ValueError, Image.DecompressionBombError):
        return np.full((THUMB, THUMB, 3), 128, dtype=np.uint8)
    scale = THUMB / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img = img.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    square.paste(img, ((THUMB - img.width) // 2, (THUMB - img.height) // 2))
    return np.asarray(square)


def _short(path: str | Path) -> str:
    """class-folder/file name, shortened in the middle to NAME_CHARS."""
    p = Path(path)
    name = f"{p.parent.name}/{p.name}" if p.parent.name else p.name
    if len(name) <= NAME_CHARS:
        return name
    half = (NAME_CHARS - 1) // 2
    return f"{name[:half]}…{name[-half:]}"


def duplicates_png(
    pairs: Sequence[tuple[int, int, float]],
    paths: Sequence[str | Path],
    out: Path,
    splits: Sequence[str] | None = None,
) -> Path | None:
    """(row a, row b, cosine similarity) pairs, each as one tile of the two images side by side;
    with `splits` (a split name per row), pairs across splits (leakage) first, then the most
    similar. None, and no file, when there are no pairs."""
    if not pairs:
        return None

    def key(pair: tuple[int, int, float]) -> tuple[bool, float]:
        same = splits is None or splits[pair[0]] == splits[pair[1]]
        return (same, -pair[2])

    shown = sorted(pairs, key=key)[:MAX_PAIRS]
    gap = np.full((THUMB, 8, 3), 255, dtype=np.uint8)
    tiles, captions = [], []
    for a, b, sim in shown:
        tiles.append(np.hstack([_thumb(paths[a]), gap, _thumb(paths[b])]))
        where = f"  {splits[a]} | {splits[b]}" if splits is not None else ""
        captions.append(f"similarity {sim:.3f}{where}\n{_short(paths[a])}\n{_short(paths[b])}")
    order = "across splits first, then most similar" if splits is not None else "most similar"
    title = f"{len(shown)} of {len(pairs)} duplicate pairs ({order})"
    return _wide_grid(tiles, captions, out, title)


def _wide_grid(tiles: Sequence[np.ndarray], captions: Sequence[str], out: Path, title: str) -> Path:
    """Two-image tiles, two per row, each with its caption above (plots.image_grid's cells are
    square: a pair there would be half the size)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from trainer.evaluation.plots import DPI, font_for

    cols = min(2, len(tiles))
    rows = -(-len(tiles) // cols)
    fig = Figure(figsize=(cols * 5.0, rows * 2.9 + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    font = font_for(captions)
    for ax in axes:
        ax.axis("off")
    for ax, tile, caption in zip(axes, tiles, captions):
        ax.imshow(tile)
        ax.set_title(caption, fontsize=8, fontproperties=font)
    fig.suptitle(title, fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=DPI)
    return out


def suspects_png(
    suspects: Sequence[Mapping],
    paths: Sequence[str | Path],
    class_names: Sequence[str],
    out: Path,
) -> Path | None:
    """Suspected label errors (labels.suspects' dicts, most suspicious first): each image with
    its given and suggested label and their out-of-sample probabilities. None when empty."""
    from trainer.evaluation.plots import display_names, image_grid

    if not suspects:
        return None
    names, _, _ = display_names(class_names)
    shown = list(suspects)[:MAX_TILES]
    tiles = [_thumb(paths[s["row"]]) for s in shown]
    captions = [
        f"given {names[s['given']]} ({s['p_given']:.0%})\n"
        f"suggested {names[s['suggested']]} ({s['p_suggested']:.0%})\n{_short(paths[s['row']])}"
        for s in shown
    ]
    title = f"{len(shown)} of {len(suspects)} suspected label errors (most suspicious first)"
    return image_grid(tiles, captions, out, title, cols=6)


def outliers_png(rows: Sequence[Mapping], paths: Sequence[str | Path], out: Path) -> Path | None:
    """Outliers and odd images ({"row", "reason"} dicts, in the order given: put the most
    important first), each with its reason. None when empty."""
    from trainer.evaluation.plots import image_grid

    if not rows:
        return None
    shown = list(rows)[:MAX_TILES]
    tiles = [_thumb(paths[r["row"]]) for r in shown]
    captions = [
        "\n".join(textwrap.wrap(r["reason"], 34, max_lines=4, placeholder=" …"))
        + f"\n{_short(paths[r['row']])}"
        for r in shown
    ]
    title = f"{len(shown)} of {len(rows)} outliers and odd images"
    return image_grid(tiles, captions, out, title, cols=6)
