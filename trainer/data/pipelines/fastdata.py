"""The fast pipelines: decode every image once (cached) or on the device (decode); augment batches
on the device.

Decoding a JPEG costs far more than a training step's share of a GPU, so each image is decoded
once into a uint8 cache at cache resolution S (the eval resize, e.g. 256 for a 224 crop):
  CACHE/<key>/pixels.u8   N x S x S x 3 bytes, memory-mapped; CACHE/<key>/meta.json written last
The key is a hash of every file's path, size and mtime, S and the resampling, so a second run
reuses the cache and any change to the data or the resolution builds a new one.

Each image is resized so its shorter side is S (the same call the eval transform makes) and cut
to an S x S square placed so that the eval view (a center crop of image_size) has exactly the
pixels of the PIL eval path. Training crops (RandomResizedCrop's rule, inside that square) and
flips are drawn per image from (seed, epoch, row), like the PIL path's augmentation, so resumed
runs stay exact; they are applied to whole batches on the device with roi_align.

For data sets too big to cache (data.pipeline=decode), loader workers only read the files'
bytes and each batch of JPEGs is decoded on the device (torchvision.io.decode_jpeg: nvJPEG on
a GPU), resized and squared there the same way; other formats are decoded by Pillow in the
workers.
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
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.ops import roi_align
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from trainer.config import DataConfig
from trainer.data.sampling import sample_seed
from trainer.data.transforms import Preprocessing, load_rgb
from trainer.data.workers import ctrl_c_held, ignore_ctrl_c

FORMAT = 1  # bump when the cache layout or the resize changes


def cache_root(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    base = os.environ.get("TRAINER_CACHE_DIR") or Path.home() / ".cache" / "trainer"
    return Path(base) / "pixels"


def choose(cfg: DataConfig, n_images: int, size: int) -> tuple[str, str]:
    """pil, cached or decode, and a sentence saying why (for the log)."""
    if cfg.pipeline == "pil":
        return "pil", "data.pipeline=pil"
    needs_pil = []
    if cfg.augment and cfg.auto_augment != "none":
        needs_pil.append(f"data.auto_augment={cfg.auto_augment}")
    if cfg.augment and cfg.random_erasing:
        needs_pil.append("data.random_erasing")
    if needs_pil:
        why = f"{', '.join(needs_pil)} runs on PIL images"
        if cfg.pipeline == "cached":
            raise ValueError(f"data.pipeline=cached: {why}; use data.pipeline=pil or auto")
        return "pil", f"PIL pipeline: {why}"
    if cfg.pipeline == "decode":
        return "decode", "decode pipeline: JPEG batches decoded on the device, augmented in batches"
    root = cache_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    need = n_images * size * size * 3
    free = shutil.disk_usage(root).free
    if need > 0.9 * free:
        why = f"the cache needs {need / 1e9:.1f} GB, {root} has {free / 1e9:.1f} GB free"
        if cfg.pipeline == "cached":
            raise ValueError(f"data.pipeline=cached: {why}; set data.cache_dir")
        return "decode", f"decode pipeline: {why}; JPEGs are decoded on the device every epoch"
    return "cached", f"cached pipeline: images decoded once at {size}px, augmented in batches"


def cache_key(paths: Sequence[str], size: int, interpolation: str) -> str:
    h = hashlib.sha256(f"{FORMAT}|{size}|{interpolation}".encode())
    for path in paths:
        st = os.stat(path)
        h.update(f"|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def square_offsets(h: int, w: int, size: int, crop: int) -> tuple[int, int]:
    """Top-left of the S x S square such that its center crop of `crop` equals the center crop
    of `crop` from the whole h x w image (torchvision's rounding, applied twice)."""
    inner = int(round((size - crop) / 2.0))
    top = min(max(int(round((h - crop) / 2.0)) - inner, 0), h - size)
    left = min(max(int(round((w - crop) / 2.0)) - inner, 0), w - size)
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


def keep_on_device(cfg: DataConfig, cache: PixelCache, device: torch.device) -> bool:
    """data.cache_on_device, or (null) on CUDA when the cache takes < 1/4 of free memory."""
    if cfg.cache_on_device is not None:
        return cfg.cache_on_device
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return cache.pixels.nbytes < free / 4


def _fill(args: tuple[str, Sequence[tuple[int, str]], int, int, Preprocessing]) -> int:
    file, jobs, n, size, pre = args
    pixels = np.memmap(file, dtype=np.uint8, mode="r+", shape=(n, size, size, 3))
    for row, path in jobs:
        pixels[row] = decode(path, pre, size)
    pixels.flush()
    return len(jobs)


STALE_AFTER_S = 24 * 3600  # a build folder of another host untouched this long is abandoned


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


def crop_box(g: torch.Generator, size: int, min_scale: float) -> tuple[float, float, float, float]:
    """RandomResizedCrop's box (x1, y1, x2, y2) inside a size x size square (torchvision's rule:
    area fraction in [min_scale, 1], aspect ratio in [3/4, 4/3], 10 tries, then the whole)."""
    area = size * size
    log_lo, log_hi = math.log(3 / 4), math.log(4 / 3)
    for _ in range(10):
        target = area * torch.empty(1).uniform_(min_scale, 1.0, generator=g).item()
        ratio = math.exp(torch.empty(1).uniform_(log_lo, log_hi, generator=g).item())
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= size and 0 < h <= size:
            top = int(torch.randint(0, size - h + 1, (1,), generator=g))
            left = int(torch.randint(0, size - w + 1, (1,), generator=g))
            return (left, top, left + w, top + h)
    return (0, 0, size, size)


class CachedTrainView(Dataset):
    """Training batches from the cache: uint8 squares plus each image's crop box and flips,
    drawn from (seed, epoch, row). Keys are (row, epoch), as from EpochBatchSampler.
    A `files` source instead of a cache gives encoded images (data.pipeline=decode)."""

    def __init__(
        self,
        cache: PixelCache | EncodedFiles,
        labels: Sequence[int],
        cfg: DataConfig,
        seed: int,
        crop: int,
    ):
        self.cache, self.labels, self.cfg, self.seed = cache, list(labels), cfg, seed
        self.crop = crop  # the eval view's side, for data.augment=false

    def __len__(self) -> int:
        return len(self.labels)

    def _draw(self, row: int, epoch: int) -> tuple[tuple[float, ...], bool, bool]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, row))
        box = crop_box(g, self.cache.size, self.cfg.min_crop_scale)
        hflip = self.cfg.hflip and bool(torch.rand(1, generator=g) < 0.5)
        vflip = self.cfg.vflip and bool(torch.rand(1, generator=g) < 0.5)
        return box, hflip, vflip

    def __getitems__(self, keys: list[tuple[int, int]]) -> dict:
        rows = [row for row, _ in keys]
        if isinstance(self.cache, EncodedFiles):
            batch = {
                "encoded": [self.cache.read(r) for r in rows],
                "label": torch.tensor([self.labels[r] for r in rows]),
                "index": torch.tensor(rows),
            }
            if self.cfg.augment:
                draws = [self._draw(row, epoch) for row, epoch in keys]
                batch["boxes"] = torch.tensor([d[0] for d in draws], dtype=torch.float32)
                batch["flips"] = torch.tensor([[d[1], d[2]] for d in draws], dtype=torch.bool)
            return batch
        if not self.cfg.augment:  # data.augment=false: the eval view, nothing drawn
            crop = CachedEvalView(self.cache, self.labels, self.crop)
            return {
                "pixels": torch.stack([crop[r]["pixels"] for r in rows]),
                "label": torch.tensor([self.labels[r] for r in rows]),
                "index": torch.tensor(rows),
            }
        draws = [self._draw(row, epoch) for row, epoch in keys]
        if self.cache.resident is not None:  # gathered in device memory
            index = torch.tensor(rows, device=self.cache.resident.device)
            pixels = self.cache.resident.index_select(0, index)
        else:
            pixels = torch.from_numpy(np.ascontiguousarray(self.cache.pixels[rows]))
        return {
            "pixels": pixels,
            "boxes": torch.tensor([d[0] for d in draws], dtype=torch.float32),
            "flips": torch.tensor([[d[1], d[2]] for d in draws], dtype=torch.bool),
            "label": torch.tensor([self.labels[r] for r in rows]),
            "index": torch.tensor(rows),
        }


class CachedEvalView(Dataset):
    """The eval view from the cache: the center crop of image_size, as uint8 HWC."""

    def __init__(self, cache: PixelCache, labels: Sequence[int], crop: int):
        self.cache, self.labels = cache, list(labels)
        self.top = int(round((cache.size - crop) / 2.0))
        self.crop = crop

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, row: int) -> dict:
        t, c = self.top, self.crop
        square = self.cache.pixels[row, t : t + c, t : t + c]
        return {
            "pixels": torch.from_numpy(np.array(square)),
            "label": self.labels[row],
            "index": row,
        }


class EncodedFiles:
    """The decode pipeline's source: JPEG files as their bytes (decoded on the device later),
    other formats decoded here by Pillow into the S x S square the cache would hold."""

    def __init__(self, paths: Sequence[str], pre: Preprocessing):
        self.paths, self.pre, self.size = list(paths), pre, pre.resize_size

    def read(self, row: int) -> torch.Tensor:
        path = self.paths[row]
        with open(path, "rb") as f:
            head = f.read()
        if head[:3] == b"\xff\xd8\xff":  # JPEG
            return torch.frombuffer(bytearray(head), dtype=torch.uint8)
        return torch.from_numpy(decode(path, self.pre, self.size))  # S x S x 3


class EncodedEvalView(Dataset):
    """The decode pipeline's eval view: one encoded (or Pillow-decoded) image per row."""

    def __init__(self, files: EncodedFiles, labels: Sequence[int]):
        self.files, self.labels = files, list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, row: int) -> dict:
        return {"encoded": self.files.read(row), "label": self.labels[row], "index": row}


def collate_encoded(samples: list[dict]) -> dict:
    """Eval batches of encoded images: the bytes stay a list (their lengths differ)."""
    return {
        "encoded": [s["encoded"] for s in samples],
        "label": torch.tensor([s["label"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples]),
    }


def decode_squares(encoded: list[torch.Tensor], pre: Preprocessing, device) -> torch.Tensor:
    """Encoded JPEGs (1-D uint8) and ready squares (S x S x 3) -> B x S x S x 3 uint8 on `device`:
    decoded there, resized so the shorter side is S (antialiased) and squared like the cache."""
    size = pre.resize_size
    jpegs = [i for i, e in enumerate(encoded) if e.dim() == 1]
    out: list[torch.Tensor | None] = [e.to(device) if e.dim() == 3 else None for e in encoded]
    if jpegs:
        try:
            images = decode_jpeg(
                [encoded[i].cpu() for i in jpegs],  # nvJPEG reads from host memory
                mode=ImageReadMode.RGB,
                device=device,
                apply_exif_orientation=True,
            )
        except RuntimeError:  # e.g. CMYK on nvJPEG: decode those on the CPU one by one
            images = [
                decode_jpeg(
                    encoded[i].cpu(), mode=ImageReadMode.RGB, apply_exif_orientation=True
                ).to(device)
                for i in jpegs
            ]
        for i, img in zip(jpegs, images):
            h, w = img.shape[1:]
            scale = size / min(h, w)
            nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
            img = torch.nn.functional.interpolate(
                img[None].float(), size=(nh, nw), mode=pre.interpolation, antialias=True
            )[0]
            top, left = square_offsets(nh, nw, size, pre.image_size)
            square = img[:, top : top + size, left : left + size].round().clamp(0, 255)
            out[i] = square.to(torch.uint8).permute(1, 2, 0)
    return torch.stack(out)


def as_batch(batch: dict) -> dict:
    """collate_fn for CachedTrainView: __getitems__ already made the batch."""
    return batch


class DeviceTransform:
    """uint8 batches on the device -> normalized float images: crop + resize + flip for training
    (roi_align, bilinear), just normalization for the eval view."""

    def __init__(self, pre: Preprocessing, device: torch.device):
        self.pre, self.device = pre, device
        self.size = pre.image_size
        self.mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1) * 255

    def __call__(self, batch: dict) -> dict:
        if "encoded" in batch:  # decode pipeline: decode + square here, then as from the cache
            squares = decode_squares(batch.pop("encoded"), self.pre, self.device)
            if "boxes" not in batch:  # eval view (or data.augment=false): the center crop
                t = int(round((self.pre.resize_size - self.size) / 2.0))
                squares = squares[:, t : t + self.size, t : t + self.size]
            batch["pixels"] = squares
        if "pixels" not in batch:
            return batch
        x = batch.pop("pixels").permute(0, 3, 1, 2).float()  # B x 3 x H x W, 0..255
        if "boxes" in batch:
            boxes = batch.pop("boxes")
            index = torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)
            rois = torch.cat([index[:, None], boxes], dim=1)
            x = roi_align(x, rois, (self.size, self.size), 1.0, sampling_ratio=2, aligned=True)
            flips = batch.pop("flips")
            x = torch.where(flips[:, 0].view(-1, 1, 1, 1), x.flip(3), x)
            x = torch.where(flips[:, 1].view(-1, 1, 1, 1), x.flip(2), x)
        batch["pixel_values"] = (x - self.mean) / self.std
        return batch


class Samples:
    """Single augmented training images from a batched view (for the training-samples plot)."""

    def __init__(self, view: CachedTrainView, transform: DeviceTransform):
        self.view, self.transform = view, transform

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, row: int) -> dict:
        batch = self.view.__getitems__([(row, 0)])
        batch = {
            k: v.to(self.transform.device) if torch.is_tensor(v) else v for k, v in batch.items()
        }
        out = self.transform(batch)
        return {"pixel_values": out["pixel_values"][0].cpu(), "label": int(out["label"][0])}
