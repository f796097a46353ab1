"""The pixel cache: every image decoded once into a uint8 file, built in parallel, reused.

Decoding a JPEG costs far more than a training step's share of a GPU, so each image is decoded
once into a uint8 cache at cache resolution S (the eval resize, e.g. 256 for a 224 crop):
  CACHE/<key>/pixels.u8   N x S x S x 3 bytes, memory-mapped; CACHE/<key>/meta.json written last
The key is a hash of every file's path, size and mtime, S and the resampling, so a second run
reuses the cache and any change to the data or the resolution builds a new one.

Each image is resized so its shorter side is S (the same call the eval transform makes) and cut
to an S x S square placed so that the eval view (a center crop of image_size) has exactly the
pixels of the PIL eval path.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from trainer.config import DataConfig
from trainer.data.transforms import Preprocessing, center_crop_offset, load_rgb
from trainer.data.workers import ctrl_c_held, ignore_ctrl_c

FORMAT = 1  # bump when the cache layout or the resize changes
STALE_AFTER_S = 24 * 3600  # a build folder of another host untouched this long is abandoned


def cache_root(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    base = os.environ.get("TRAINER_CACHE_DIR") or Path.home() / ".cache" / "trainer"
    return Path(base) / "pixels"


def cache_key(paths: Sequence[str], size: int, interpolation: str) -> str:
    h = hashlib.sha256(f"{FORMAT}|{size}|{interpolation}".encode())
    for path in paths:
        st = os.stat(path)
        h.update(f"|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def square_offsets(h: int, w: int, size: int, crop: int) -> tuple[int, int]:
    """Top-left of the S x S square such that its center crop of `crop` equals the center crop
    of `crop` from the whole h x w image (torchvision's rounding, applied twice)."""
    inner = center_crop_offset(size, crop)
    top = min(max(center_crop_offset(h, crop) - inner, 0), h - size)
    left = min(max(center_crop_offset(w, crop) - inner, 0), w - size)
    return top, left


def decode(path: str, pre: Preprocessing, size: int) -> np.ndarray:
    """One image as the S x S x 3 uint8 square the cache stores."""
    img = TF.resize(load_rgb(path), size, interpolation=InterpolationMode(pre.interpolation))
    w, h = img.size
    top, left = square_offsets(h, w, size, pre.image_size)
    return np.array(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


@dataclass
class PixelCache:
    folder: Path
    size: int
    pixels: np.ndarray  # memory-mapped N x S x S x 3 uint8
    resident: torch.Tensor | None = None  # the same pixels in device memory (cache_on_device)

    def to_device(self, device: torch.device) -> PixelCache:
        """A copy whose batches are gathered in device memory: no host copy per batch."""
        resident = torch.from_numpy(np.asarray(self.pixels)).to(device)
        return PixelCache(self.folder, self.size, self.pixels, resident)

    def center(self, row: int, crop: int) -> torch.Tensor:
        """The eval view of one image: its center crop of `crop`, uint8 HWC."""
        t = center_crop_offset(self.size, crop)
        return torch.from_numpy(np.array(self.pixels[row, t : t + crop, t : t + crop]))

    def gather(self, rows: list[int], crop: int | None) -> dict:
        """{"pixels": B x S x S x 3} for augmentation, or the center crops when `crop` is given
        (data.augment=false); from device memory when the cache is resident."""
        if crop is not None:
            return {"pixels": torch.stack([self.center(r, crop) for r in rows])}
        if self.resident is not None:
            index = torch.tensor(rows, device=self.resident.device)
            return {"pixels": self.resident.index_select(0, index)}
        return {"pixels": torch.from_numpy(np.ascontiguousarray(self.pixels[rows]))}


def keep_on_device(cfg: DataConfig, cache: PixelCache, device: torch.device) -> bool:
    """data.cache_on_device, or (null) on CUDA when the cache takes < 1/4 of free memory."""
    if cfg.cache_on_device is not None:
        return cfg.cache_on_device
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return cache.pixels.nbytes < free / 4


def build(
    paths: Sequence[str], pre: Preprocessing, cfg: DataConfig, workers: int, say=print
) -> PixelCache:
    """The cache of these images, reused when it exists, else decoded in parallel (collective-
    free: call it on the main process first, then on the others, which find it complete)."""
    size = pre.resize_size
    folder = cache_root(cfg) / cache_key(paths, size, pre.interpolation)
    n = len(paths)
    if not (folder / "meta.json").is_file():
        start = time.perf_counter()
        remove_stale_builds(folder.parent)
        tmp = folder.with_name(f"{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}")
        try:
            _decode_into(tmp, paths, pre, size, workers)
            try:
                os.replace(tmp, folder)
            except OSError:  # another process finished the same cache first
                pass
        finally:  # interrupted (Ctrl-C, an unreadable image, a full disk): leave nothing behind
            shutil.rmtree(tmp, ignore_errors=True)
        say(
            f"pixel cache: {n} images decoded in {time.perf_counter() - start:.1f}s, "
            f"{n * size * size * 3 / 1e6:.1f} MB at {folder}"
        )
    else:
        say(f"pixel cache: reusing {folder} ({n} images at {size}px)")
    pixels = np.memmap(folder / "pixels.u8", dtype=np.uint8, mode="r", shape=(n, size, size, 3))
    return PixelCache(folder, size, pixels)


def _fill(args: tuple[str, Sequence[tuple[int, str]], int, int, Preprocessing]) -> int:
    file, jobs, n, size, pre = args
    pixels = np.memmap(file, dtype=np.uint8, mode="r+", shape=(n, size, size, 3))
    for row, path in jobs:
        pixels[row] = decode(path, pre, size)
    pixels.flush()
    return len(jobs)


def _decode_into(
    tmp: Path, paths: Sequence[str], pre: Preprocessing, size: int, workers: int
) -> None:
    """A complete cache folder at `tmp`: pixels.u8 filled, then meta.json (which marks it done)."""
    n = len(paths)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    file = tmp / "pixels.u8"
    np.memmap(file, dtype=np.uint8, mode="w+", shape=(n, size, size, 3)).flush()
    chunk = max(1, min(256, math.ceil(n / max(1, workers) / 4)))
    jobs = [
        (str(file), list(enumerate(paths))[i : i + chunk], n, size, pre) for i in range(0, n, chunk)
    ]
    if workers > 1 and n > chunk:
        with ctrl_c_held():  # the workers are forked here
            pool = mp.get_context("fork").Pool(workers, initializer=ignore_ctrl_c)
        with pool:
            for _ in pool.imap_unordered(_fill, jobs):
                pass
    else:
        for job in jobs:
            _fill(job)
    meta = {"images": n, "size": size, "bytes": n * size * size * 3, "format": FORMAT}
    (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def remove_stale_builds(root: Path, now: float | None = None) -> list[Path]:
    """Delete the build folders (KEY.tmp-HOST-PID) of builds that can no longer finish: of this
    host when that process is gone (killed, out of memory), of any host when nothing in them
    changed for STALE_AFTER_S (the cache folder may be shared by nodes, whose processes cannot
    be asked). A live build, here or on another node, is never touched. Returns what went."""
    now = time.time() if now is None else now
    removed = []
    try:
        candidates = [p for p in root.iterdir() if ".tmp-" in p.name and p.is_dir()]
    except OSError:
        return removed
    for folder in candidates:
        host, _, pid = folder.name.rsplit(".tmp-", 1)[1].rpartition("-")
        dead_here = host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))
        if dead_here or now - _last_change(folder) > STALE_AFTER_S:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _last_change(folder: Path) -> float:
    """Newest mtime of the folder and its files (a build in progress keeps writing pixels.u8)."""
    try:
        return max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir())])
    except OSError:  # removed meanwhile by its builder
        return time.time()
