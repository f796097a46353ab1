"""Which images are odd: far from every class in embedding space, very dark or bright, blurry,
tiny or of an extreme aspect ratio; and how the classes are balanced in each split.

Every threshold is a named constant below with its reason; an image may have several reasons.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

# Embedding outliers: an image's distance is the mean cosine distance to its K_NEAREST nearest
# images (among up to REFERENCE of them); its score the robust z-score of that distance,
# (d - median) / (1.4826 * MAD), the MAD scaled to a normal's standard deviation. Nearest images,
# not class centres: a class is often several clusters, and a centre between them makes its own
# members look far. Measured on digits' pixels: 10 planted noise images score 7.7 to 12, the
# 1,797 digits at most 6.8 (one above OUTLIER_Z, four above 5); by distance to the nearest class
# centre the noise scored 4.4 to 7.7 and a clean digit 5.3, no threshold between them.
K_NEAREST = 5
REFERENCE = 10_000  # images compared against: N x REFERENCE products, not N x N
OUTLIER_Z = 6.0
# Below this MAD (cosine distance) the spread is treated as this: near-identical images would
# otherwise make any tiny difference an "outlier".
MIN_MAD = 0.01
CHUNK = 1024  # rows per matrix product: CHUNK x REFERENCE float32 (40 MB)

# Image statistics are taken on a greyscale copy whose longer side is at most this (pixels):
# fast (JPEG decodes at 1/2..1/8 scale) and the blur measure comparable across image sizes.
STATS_SIDE = 256
# Mean brightness in [0, 1]: below DARK an image is nearly black, above BRIGHT nearly white
# (the digits demo's white-on-black glyphs: 0.11 to 0.24).
DARK = 0.08
BRIGHT = 0.95
# Variance of the 4-neighbour Laplacian (grey levels 0-255) on the STATS_SIDE copy (box-filtered:
# fast, and the measure stays within ~30% across sizes): scikit-learn's two sample photos measure
# 860 and 3,230 at 640 px (750 and 2,100 at 256 px); blurred by a Gaussian of radius 1 px at the
# 256-px scale, 45 to 100; of radius 2 px, 7 to 11. Not applied to images already dark, bright or
# tiny, whose lack of edges has that other reason.
BLURRY = 25.0
# Shorter side in pixels below which an image is tiny (a thumbnail, an icon, a broken crop): a
# 224-px model input would be upscaled more than 7x.
TINY = 32
# Longer side / shorter side above which the aspect ratio is extreme (a banner, a strip): the
# center crop keeps less than 1/4 of it.
ASPECT = 4.0


def _knn_distance(x: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean cosine distance to the K_NEAREST nearest reference images, the nearest one's row)
    for every row; an image is never its own neighbour."""
    n = len(x)
    ref = np.arange(n)
    if n > REFERENCE:
        ref = np.sort(np.random.default_rng(seed).choice(n, REFERENCE, replace=False))
    column = np.full(n, -1)
    column[ref] = np.arange(len(ref))
    k = min(K_NEAREST, len(ref) - 1)
    dist, nearest = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.int64)
    for start in range(0, n, CHUNK):
        rows = np.arange(start, min(start + CHUNK, n))
        sim = x[rows] @ x[ref].T
        own = column[rows] >= 0
        sim[own.nonzero()[0], column[rows][own]] = -np.inf
        top = np.partition(sim, sim.shape[1] - k, axis=1)[:, -k:]
        dist[rows] = 1.0 - top.mean(axis=1)
        nearest[rows] = ref[sim.argmax(axis=1)]
    return dist, nearest


def embedding_outliers(
    emb: np.ndarray, labels: np.ndarray, class_names: Sequence[str], seed: int = 0
) -> list[dict]:
    """Images far from every class, i.e. from every other image: {"row", "score", "reason"},
    farthest first. score: robust z-score (above OUTLIER_Z) of the mean cosine distance to the
    K_NEAREST nearest images; the reason names the nearest image's class. Far from all, not from
    its own class: a mislabelled image is close to another class, and that is the label check's
    finding."""
    x = np.asarray(emb, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    if len(x) < K_NEAREST + 2:
        return []
    dist, nearest = _knn_distance(x, seed)
    median = float(np.median(dist))
    mad = max(float(np.median(np.abs(dist - median))), MIN_MAD)
    z = (dist - median) / (1.4826 * mad)
    rows = np.flatnonzero(z > OUTLIER_Z)
    rows = rows[np.argsort(-z[rows], kind="stable")]
    return [
        {
            "row": int(r),
            "score": round(float(z[r]), 2),
            "reason": (
                f"far from every class: cosine distance {dist[r]:.2f} to the {K_NEAREST} nearest "
                f"images (typical {median:.2f}; nearest: class {class_names[y[nearest[r]]]!r})"
            ),
        }
        for r in rows
    ]


def _laplacian_var(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: low when there are no sharp edges."""
    g = grey.astype(np.float32)
    if min(g.shape) < 3:
        return 0.0
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def _stats_of(path: str | Path, load_rgb: Callable[[Image.Image], Image.Image]) -> dict:
    try:
        with Image.open(path) as img:
            w, h = img.size
            img.draft("L", (STATS_SIDE, STATS_SIDE))  # JPEG: decode at a reduced scale
            grey = load_rgb(img).convert("L")
        grey.thumbnail((STATS_SIDE, STATS_SIDE), resample=Image.Resampling.BOX)
        arr = np.asarray(grey)
        return {
            "brightness": round(float(arr.mean()) / 255.0, 4),
            "blur": round(_laplacian_var(arr), 2),
            "w": w,
            "h": h,
        }
    except (OSError, ValueError, Image.DecompressionBombError):
        return {"brightness": None, "blur": None, "w": None, "h": None}


def image_stats(paths: Sequence[str | Path], workers: int | None = None) -> list[dict]:
    """{"brightness" (mean grey, 0-1), "blur" (Laplacian variance, higher is sharper), "w", "h"
    (pixels)} per path, in order; all None for a file that cannot be decoded.

    Threads, not processes: Pillow's decoding and numpy release the GIL, and no helper process is
    forked (its signals and start-up cost are data/workers.py's business). Measured: 4 to 7 ms per
    640x427 JPEG on 2 busy cores (20k images: 1.5 to 2.5 min). Decoded as training decodes
    (transforms.load_rgb: 16-bit grey scaled, transparency over white), so a finding is about
    the pixels the model sees.
    """
    from trainer.data.transforms import load_rgb  # here: importing this module needs no torch

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(functools.partial(_stats_of, load_rgb=load_rgb), paths))


def _reasons(s: Mapping) -> list[str]:
    if s.get("w") is None:
        return ["unreadable"]
    reasons = []
    short, long = min(s["w"], s["h"]), max(s["w"], s["h"])
    if short < TINY:
        reasons.append(f"tiny ({s['w']}x{s['h']} px)")
    if short > 0 and long / short > ASPECT:
        reasons.append(f"extreme aspect ratio ({long / short:.1f}:1)")
    if s["brightness"] < DARK:
        reasons.append(f"very dark (mean brightness {s['brightness']:.2f})")
    elif s["brightness"] > BRIGHT:
        reasons.append(f"very bright (mean brightness {s['brightness']:.2f})")
    elif short >= TINY and s["blur"] < BLURRY:
        reasons.append(f"blurry (edge variance {s['blur']:.0f}, sharp > {BLURRY:.0f})")
    return reasons


def odd_images(stats: Sequence[Mapping]) -> list[dict]:
    """{"row", "reason"} for each image outside the thresholds above, in row order; several
    reasons are joined with "; "."""
    found = []
    for row, s in enumerate(stats):
        reasons = _reasons(s)
        if reasons:
            found.append({"row": row, "reason": "; ".join(reasons)})
    return found


def class_balance(
    labels_by_split: Mapping[str, Sequence[int] | np.ndarray], class_names: Sequence[str]
) -> dict:
    """Per split: {"counts": {class: images}, "total", "largest", "smallest" (class names),
    "ratio" (largest / smallest count; None when a class has none), "missing" (classes with no
    image)}. JSON-ready."""
    out = {}
    for split, labels in labels_by_split.items():
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
        big, small = int(counts.argmax()), int(counts.argmin())
        out[split] = {
            "counts": {name: int(c) for name, c in zip(class_names, counts)},
            "total": int(counts.sum()),
            "largest": class_names[big],
            "smallest": class_names[small],
            "ratio": round(float(counts[big] / counts[small]), 2) if counts[small] else None,
            "missing": [name for name, c in zip(class_names, counts) if c == 0],
        }
    return out
