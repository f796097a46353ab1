"""Where the bench's images come from: `--data`, data.root, or photo-like JPEGs it writes
(`--make-data`, or a temporary folder when neither is given).

The generated images have smooth shading, shapes and texture in class-dependent colours, so the
files decode like photos of that size rather than like noise or flat colour.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from trainer.bench.options import BenchOptions
from trainer.config import ConfigError, RunConfig


def synthetic_image(seed: int, cls: int, size: tuple[int, int], classes: int) -> Image.Image:
    """A photo-like RGB image: smooth shading, blurred shapes, mid-frequency texture and grain,
    coloured by class (so the classes are learnable). At 500x375 and quality 90 a JPEG of it is
    ~60 KB, at 224x224 ~16 KB: in the range of real photos, unlike noise (huge) or flat colour."""
    w, h = size
    rng = np.random.default_rng([seed, cls])
    hue = cls / classes
    base = np.array([128 + 60 * math.cos(2 * math.pi * (hue + k / 3)) for k in range(3)])
    grid = rng.normal(0, 45, size=(4, 5, 3)) + base
    img = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8), "RGB")
    img = img.resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 12))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        rw, rh = (
            int(rng.integers(max(1, w // 12), max(2, w // 3))),
            int(rng.integers(max(1, h // 12), max(2, h // 3))),
        )
        colour = tuple(int(c) for c in np.clip(base + rng.normal(0, 50, 3), 0, 255))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x0 + rw, y0 + rh], fill=colour)
        else:
            corners = int(rng.integers(3, 7))
            pts = [
                (x0 + int(rng.integers(-rw, rw + 1)), y0 + int(rng.integers(-rh, rh + 1)))
                for _ in range(corners)
            ]
            draw.polygon(pts, fill=colour)
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float32)
    small = rng.integers(0, 256, (max(1, h // 4), max(1, w // 4), 3), dtype=np.uint8)
    mid = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR), dtype=np.float32)
    arr += 0.25 * (mid - 128) + rng.normal(0, 6, size=(h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _write_chunk(job: tuple[str, list[tuple[str, int, int]], tuple[int, int], int, int]) -> int:
    """Write one worker's share of the images; returns the bytes written."""
    root, items, size, classes, quality = job
    written = 0
    for rel, seed, cls in items:
        synthetic_image(seed, cls, size, classes).save(
            os.path.join(root, rel), "JPEG", quality=quality
        )
        written += os.path.getsize(os.path.join(root, rel))
    return written


def make_jpeg_folder(
    root: str | Path,
    counts: dict[str, int],
    size: tuple[int, int],
    classes: int,
    quality: int = 90,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write counts[split] JPEGs per split folder ('' = class folders directly under root),
    classes in turn (class_00, class_01, ...), in parallel with a progress bar."""
    from trainer.progress import bar as progress_bar

    root = Path(root).expanduser()
    if root.exists() and any(root.iterdir()):
        raise ConfigError(
            f"--make-data: {str(root)!r} is not empty; bench it with --data, or remove it"
        )
    items = []
    for s, (split, n) in enumerate(counts.items()):
        for c in range(classes):
            (root / split / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cls = i % classes
            rel = os.path.join(split, f"class_{cls:02d}", f"img_{i:06d}.jpg")
            items.append((rel, s * 10_000_000 + i, cls))
    workers = workers or os.cpu_count() or 1
    chunk = max(1, min(64, math.ceil(len(items) / (4 * workers))))
    jobs = [
        (str(root), items[i : i + chunk], size, classes, quality)
        for i in range(0, len(items), chunk)
    ]
    # fork: the workers only need numpy and PIL, and start at once (spawn re-imports torch).
    ctx = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    total = 0
    with (
        ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(ctx)) as pool,
        progress_bar(None, "writing JPEGs", total=len(items), unit="images") as bar,
    ):
        for job, nbytes in zip(jobs, pool.map(_write_chunk, jobs)):
            total += nbytes
            bar.update(len(job[1]))
    return {"root": str(root), "images": len(items), "bytes": total, "counts": counts}


def make_data_only(opts: BenchOptions) -> dict[str, Any]:
    """--make-data DIR: write the folder, say what it holds, and stop."""
    w, h = opts.image_size
    made = make_jpeg_folder(
        opts.make_data, opts.counts(), opts.image_size, opts.classes, opts.quality, opts.gen_workers
    )
    shape = "train/ val/ test/ of " if opts.whole_run else ""
    print(
        f"{made['images']} JPEGs of {w}x{h} ({shape}{opts.classes} classes, quality {opts.quality}), "
        f"{made['bytes'] / 2**20:.1f} MiB, {made['bytes'] / max(made['images'], 1) / 1024:.1f} KiB each "
        f"-> {made['root']}\nbench on it: trainer bench --data {made['root']}"
        + (" --whole-run" if opts.whole_run else "")
    )
    return made


def data_root(opts: BenchOptions, cfg: RunConfig, workdir: Path) -> Path:
    """--data, else data.root from the config, else a folder generated in the bench's temp dir."""
    if opts.data or cfg.data.root:
        return Path(opts.data or cfg.data.root).expanduser()
    w, h = opts.image_size
    print(f"no --data: generating {sum(opts.counts().values())} JPEGs of {w}x{h} in {workdir}")
    made = make_jpeg_folder(
        workdir / "data",
        opts.counts(),
        opts.image_size,
        opts.classes,
        opts.quality,
        opts.gen_workers,
    )
    return Path(made["root"])


def warm_page_cache(root: Path) -> int:
    """Read every file once, so no case pays for the disk and the one run first is not penalized."""
    total = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                while chunk := f.read(1 << 20):
                    total += len(chunk)
    return total
