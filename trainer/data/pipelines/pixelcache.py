"""The pixel cache: every image decoded once into a uint8 file, built in parallel, reused.

Decoding a JPEG costs far more than a training step's share of a GPU, so each image is decoded
once into a uint8 cache at cache resolution S (the eval resize, e.g. 256 for a 224 crop):
  CACHE/<key>/pixels.u8      N x S x L x 3 bytes, memory-mapped: each image's window, stored
                             landscape (`trainer.data.pipelines.geometry`), zero-padded to L
  CACHE/<key>/geometry.npy   N x 4: each window's height, width and eval crop's corner
  CACHE/<key>/meta.json      written last: marks the cache complete
One cache holds every file a run indexed, one row each, before the split: the same decode is the
bad-file check (a file that fails is recorded in meta.json, its row left zero, and the index leaves
it out before splitting), so a first run decodes each image once. The key is a hash of every
file's path, size and mtime, S, the resampling and the pixel limit, so a second run reuses the
cache and any change to the data or the resolution builds a new one. One process builds a given
cache while the others that need it wait (a lock file next to it): one build per node with
node-local cache folders, one in all with a shared one.

Each image is resized so its shorter side is S (the same call the eval transform makes) and kept
whole up to 3:2 (its window), so training crops reach as far as the PIL path's, and the eval view
(a center crop of image_size) has exactly the pixels of the PIL eval path. L is the widest window
of the data set: S for square images, at most 1.5 x S. A quick pass over the files' headers finds
it before the decode.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from trainer import locks, progress
from trainer.config import ConfigError, DataConfig
from trainer.data.badfiles import decode_checked, pixel_limit
from trainer.data.pipelines import housekeeping
from trainer.data.pipelines.geometry import Window, eval_crop, file_window, store, window
from trainer.data.transforms import Preprocessing, load_rgb
from trainer.data.workers import ctrl_c_held, ignore_ctrl_c

# bump when the cache layout, the resize or the verdicts change (3: whole windows, not squares;
# 4: lines are bad files, badfiles.MAX_SIDE_RATIO)
FORMAT = 4
PROGRESS_FROM = 1000  # show the build's progress from this many images


def cache_root(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    base = os.environ.get("TRAINER_CACHE_DIR") or Path.home() / ".cache" / "trainer"
    return Path(base) / "pixels"


def unusable_folder(root: Path, error: OSError) -> ConfigError:
    """The error for a cache folder that cannot be made or written (a file, read-only)."""
    why = "it is a file" if root.is_file() else (error.strerror or str(error)).lower()
    return ConfigError(
        f"the pixel cache folder {str(root)!r} cannot be used ({why}); set data.cache_dir to a "
        "writable folder, or data.pipeline=decode (no cache)"
    )


def cache_key(paths: Sequence[str], size: int, interpolation: str, limit: int | None) -> str:
    h = hashlib.sha256(f"{FORMAT}|{size}|{interpolation}|{limit}".encode())
    for path in paths:
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}|{st.st_mtime_ns}"
        except OSError:  # gone since it was listed: a bad file, which its decode reports
            stamp = "gone"
        h.update(f"|{os.path.abspath(path)}|{stamp}".encode())
    return h.hexdigest()[:32]


def decode(path: str, pre: Preprocessing, size: int) -> tuple[np.ndarray, Window]:
    """One image as the cache stores it: its window (S x width x 3 uint8, landscape), and
    where that window is."""
    return _window(load_rgb(path), pre, size)


def _window(
    rgb: Image.Image, pre: Preprocessing, size: int, longest: int | None = None
) -> tuple[np.ndarray, Window]:
    img = TF.resize(rgb, size, interpolation=InterpolationMode(pre.interpolation))
    win = window(img.height, img.width, size, pre.image_size, longest)
    return np.array(store(np.asarray(img, dtype=np.uint8), win)), win  # a writable copy


@dataclass
class PixelCache:
    """The windows of the files a cache was built from (`paths`, one row each, in order), or of
    a split of them (`rows`)."""

    folder: Path
    size: int
    pixels: np.ndarray  # memory-mapped N x S x L x 3 uint8: windows stored landscape
    geometry: np.ndarray  # N x 4 int32: Window.row() of each row (height, width, eval corner)
    paths: Sequence[str] = ()  # the files of the rows of `pixels`
    bad: dict[str, str] = field(default_factory=dict)  # path -> why it does not decode (zeros)
    rows: np.ndarray | None = None  # this split's rows of `pixels`; None: every row, in order
    decoded: int = (
        0  # files this process decoded to build it (0: it was there, or another built it)
    )
    resident: torch.Tensor | None = None  # this split's pixels in device memory (cache_on_device)

    def split(self, paths: Sequence[str]) -> PixelCache:
        """The same cache seen as `paths` only (a split's files, in its order)."""
        row_of = {path: row for row, path in enumerate(self.paths)}
        rows = np.array([row_of[p] for p in paths], dtype=np.int64)
        return replace(self, rows=rows, decoded=0)

    @property
    def nbytes(self) -> int:
        return len(self) * math.prod(self.pixels.shape[1:])

    def __len__(self) -> int:
        return len(self.pixels) if self.rows is None else len(self.rows)

    def _rows(self, rows: Sequence[int]) -> Sequence[int]:
        return rows if self.rows is None else self.rows[rows]

    def to_device(self, device: torch.device) -> PixelCache:
        """A copy whose batches are gathered in device memory: no host copy per batch."""
        own = np.asarray(self.pixels if self.rows is None else self.pixels[self.rows])
        resident = torch.from_numpy(own).to(device)
        return replace(self, resident=resident)

    def extent(self, row: int) -> tuple[int, int]:
        """(height, width) of one image's window, in the image's own orientation."""
        height, width = self.geometry[self._rows([row])[0], :2]
        return int(height), int(width)

    def center(self, row: int, crop: int) -> torch.Tensor:
        """The eval view of one image: its center crop of `crop`, uint8 HWC."""
        i = self._rows([row])[0]
        return torch.from_numpy(np.array(eval_crop(self.pixels[i], self.geometry[i], crop)))

    def gather(self, rows: list[int], crop: int | None) -> dict:
        """{"pixels": B x S x L x 3, "transposed": B} for augmentation, or {"pixels"} of the
        center crops when `crop` is given (data.augment=false); from device memory when the
        cache is resident."""
        if crop is not None:
            return {"pixels": torch.stack([self.center(r, crop) for r in rows])}
        index = self._rows(rows)
        geometry = self.geometry[index]
        transposed = torch.from_numpy(geometry[:, 0] > geometry[:, 1])
        if self.resident is not None:
            index = torch.tensor(rows, device=self.resident.device)
            return {"pixels": self.resident.index_select(0, index), "transposed": transposed}
        pixels = torch.from_numpy(np.ascontiguousarray(self.pixels[index]))
        return {"pixels": pixels, "transposed": transposed}


def keep_on_device(cfg: DataConfig, cache: PixelCache, device: torch.device) -> bool:
    """data.cache_on_device, or (null) on CUDA when the cache takes < 1/4 of free memory."""
    if cfg.cache_on_device is not None:
        return cfg.cache_on_device
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return cache.nbytes < free / 4


def build(
    paths: Sequence[str],
    pre: Preprocessing,
    cfg: DataConfig,
    workers: int,
    say: Callable[[str], None] = print,
    tell: Callable[[str], None] | None = None,
) -> PixelCache:
    """The cache of these images, reused when it exists, else decoded in parallel. Each file is
    decoded once, strictly, as the bad-file check decodes it: the files that fail are in
    `.bad` (data.max_image_pixels is part of the key). One process builds a cache at a time,
    wherever it runs: others that need it wait for it (`trainer.locks`), then read it. `say`
    tells of a reused cache; `tell` (default `say`) of a build or a wait, on any process."""
    tell = tell or say
    size, limit = pre.resize_size, pixel_limit(cfg.max_image_pixels)
    key = cache_key(paths, size, pre.interpolation, limit)
    folder = cache_root(cfg) / key
    built = False
    if not (folder / "meta.json").is_file():
        with locks.held(
            folder.with_name(f"{key}.lock"), f"building the pixel cache {folder}", tell
        ):
            if not (folder / "meta.json").is_file():  # else finished by the one waited for
                _build_folder(folder, paths, pre, size, limit, workers, tell)
                built = True
    if not built:
        say(f"pixel cache: reusing {folder} ({len(paths)} images at {size}px)")
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    shape = (len(paths), size, meta["width"], 3)
    pixels = np.memmap(folder / "pixels.u8", dtype=np.uint8, mode="r", shape=shape)
    geometry = np.load(folder / "geometry.npy")
    bad = {paths[int(row)]: reason for row, reason in meta["bad"].items()}
    decoded = len(paths) if built else 0
    return PixelCache(folder, size, pixels, geometry, list(paths), bad, decoded=decoded)


def _build_folder(
    folder: Path,
    paths: Sequence[str],
    pre: Preprocessing,
    size: int,
    limit: int | None,
    workers: int,
    tell: Callable[[str], None],
) -> None:
    """Decode into a temporary folder of this process, then rename it into place."""
    start = time.perf_counter()
    gone = housekeeping.tidy(folder.parent, FORMAT)
    if gone:
        freed = amount(sum(nbytes for _, nbytes in gone))
        tell(f"pixel cache: freed {freed} in {folder.parent}: {len(gone)} unusable cache(s)")
    tmp = folder.with_name(f"{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    try:
        _decode_into(tmp, paths, pre, size, limit, workers)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same cache first (no lock here)
            pass
    finally:  # interrupted (Ctrl-C, a full disk): leave nothing behind
        shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    tell(
        f"pixel cache: {meta['images']} images decoded in {time.perf_counter() - start:.1f}s, "
        f"{meta['bytes'] / 1e6:.1f} MB at {folder} (by process {os.getpid()} on "
        f"{socket.gethostname()})"
    )


def _fill(
    args: tuple[str, Sequence[tuple[int, str]], tuple[int, ...], Preprocessing, int | None],
) -> tuple[int, dict[int, str], dict[int, tuple[int, ...]]]:
    """Decode one job's files into their rows: (files done, {row: why it is bad},
    {row: Window.row()})."""
    file, jobs, shape, pre, limit = args
    n, size, width = shape[:3]
    pixels = np.memmap(file, dtype=np.uint8, mode="r+", shape=shape)
    bad, geometry = {}, {}
    for row, path in jobs:
        rgb, reason = decode_checked(path, limit)
        if rgb is None:
            bad[row] = reason
            geometry[row] = window(size, size, size, pre.image_size).row()
        else:
            stored, win = _window(rgb, pre, size, longest=width)
            pixels[row, :, : stored.shape[1]] = stored
            geometry[row] = win.row()
    pixels.flush()
    return len(jobs), bad, geometry


def _widest(args: tuple[Sequence[str], Preprocessing, int]) -> tuple[int, int]:
    """(files looked at, the longest window side among them), from the files' headers."""
    paths, pre, size = args
    sides = [max(file_window(p, size, pre.image_size).row()[:2]) for p in paths]
    return len(paths), max(sides, default=size)


def _decode_into(
    tmp: Path, paths: Sequence[str], pre: Preprocessing, size: int, limit: int | None, workers: int
) -> None:
    """A complete cache folder at `tmp`: pixels.u8 and geometry.npy filled, then meta.json
    (which marks it done)."""
    n = len(paths)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise unusable_folder(tmp.parent, e) from None
    chunk = max(1, min(256, math.ceil(n / max(1, workers) / 4)))
    parallel = workers if n > chunk else 1
    heads = [(paths[i : i + chunk], pre, size) for i in range(0, n, chunk)]
    width = max((w for _, w in _run_jobs(_widest, heads, parallel)), default=size)
    file, shape = tmp / "pixels.u8", (n, size, width, 3)
    _reserve(file, shape)
    rows = list(enumerate(paths))
    jobs = [(str(file), rows[i : i + chunk], shape, pre, limit) for i in range(0, n, chunk)]
    bad: dict[int, str] = {}
    geometry = np.zeros((n, 4), dtype=np.int32)
    bar = progress.bar(None, "pixel cache", total=n, unit="images", disable=n < PROGRESS_FROM)
    with bar:
        for done, found, where in _run_jobs(_fill, jobs, parallel):
            bad.update(found)
            for row, g in where.items():
                geometry[row] = g
            bar.update(done)
    np.save(tmp / "geometry.npy", geometry)
    meta = {
        "images": n,
        "size": size,
        "width": width,
        "bytes": math.prod(shape),
        "format": FORMAT,
        "bad": {str(row): bad[row] for row in sorted(bad)},
        "built_by": f"process {os.getpid()} on {socket.gethostname()}",
    }
    (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def _reserve(file: Path, shape: tuple[int, ...]) -> None:
    """Create `file` with every byte of `shape` allocated on its disk. A sparse file would let
    the build start, then kill a decode worker with SIGBUS once the disk is full; this way a
    disk without room is a ConfigError here, saying how much is needed and the ways out."""
    need = math.prod(shape)
    free = shutil.disk_usage(file.parent).free
    with open(file, "wb") as f:
        f.truncate(need)
        if need <= free and _allocate(f.fileno(), need):
            return
    n, height, width = shape[:3]
    raise ConfigError(
        f"the pixel cache needs {amount(need)} ({n:,} images x {height}x{width}x3 bytes), "
        f"{file.parent.parent} has {amount(free)} free; set data.cache_dir=DIR on a disk "
        "with more room, or data.pipeline=decode (no cache: JPEGs decoded on the device every "
        "epoch)"
    )


def amount(nbytes: float) -> str:
    """A disk size for a message: GB, or MB below a tenth of a GB; 3 digits below 10 units, so
    a size needed and a size free that differ do not print the same."""
    value, unit = (nbytes / 1e9, "GB") if nbytes >= 1e8 else (nbytes / 1e6, "MB")
    return f"{value:.1f} {unit}" if value >= 10 else f"{value:.2f} {unit}"


def _allocate(fd: int, nbytes: int) -> bool:
    """False when the disk has no room for `nbytes`; True when they are allocated, or when
    the system cannot allocate ahead (macOS, some network file systems: the file stays sparse)."""
    if not hasattr(os, "posix_fallocate"):
        return True
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        return e.errno != errno.ENOSPC
    return True


def _run_jobs(work: Callable, jobs: list, workers: int) -> Iterator:
    """work(job) for each job, from a pool of forked workers (in this process with 1 worker)."""
    if workers <= 1:
        yield from map(work, jobs)
        return
    with ctrl_c_held():  # the workers are forked here
        pool = mp.get_context("fork").Pool(workers, initializer=ignore_ctrl_c)
    with pool:
        yield from pool.imap_unordered(work, jobs)
