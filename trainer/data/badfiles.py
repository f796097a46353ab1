"""Find the image files that would break a run, by decoding every one of them once.

A file is bad when it is empty, truncated, not an image at all (an HTML error page saved as
.jpg), has more pixels than the limit (a decompression bomb, or a 300-megapixel scan that
would exhaust a DataLoader worker's memory), or is a line, not a picture (a side over
MAX_SIDE_RATIO times the other: its resize to the model's input would take gigabytes). Each
file is fully decoded the way training reads it (`load_rgb`), so a file that passes here also
loads in training.

`check_files` decodes in parallel and caches its verdicts in a small JSON file per image root,
keyed by path, size, mtime and the pixel limit: a second scan of the same folder only decodes
new or changed files. One process checks at a time (a lock next to the verdicts): training ranks
that start together wait for the first and read its verdicts instead of decoding again, so every
rank skips exactly the same files. `decode_checked` gives the verdict and the decoded image of
one decode, for the pixel cache, which checks while it fills (`remember` keeps its verdicts).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import PIL
from PIL import Image, ImageFile, UnidentifiedImageError

# transforms also sets the default pixel limit, Image.MAX_IMAGE_PIXELS
from trainer import locks, progress
from trainer.data.transforms import load_rgb
from trainer.data.workers import ctrl_c_held, ignore_ctrl_c

# 2: columns (paths, sizes, mtimes, limits, bad), parsed ~3x faster at 10^6; 3: lines are bad
CACHE_VERSION = 3
CHUNK = 64  # files per pool task: amortizes inter-process traffic, still balances the load
# A side over this many times the other is a line, not a picture (a separator, a spacer GIF).
# Every pipeline resizes the shorter side to S first, to MAX_SIDE_RATIO x S^2 pixels at most:
# a 1 x 5000 PNG of a few KB, under any pixel limit, took 3.1 GB and 10 s in the pixel cache's
# decode at S = 256 (1.3 GB in the PIL eval transform). Audit flags 4:1 already as odd.
MAX_SIDE_RATIO = 100
SERIAL_BELOW = 2 * CHUNK  # fewer files to decode than this: in this process, no pool start-up
PROGRESS_FROM = 1000  # show a progress bar from this many files to decode

# First bytes of the formats people have, to tell "a PNG with a broken header" from "not an image".
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"RIFF", "WEBP"),
    (b"BM", "BMP"),
)

# check_file changes Pillow's process-wide settings for its duration; one check at a time.
_PILLOW_LOCK = threading.RLock()


def pixel_limit(max_pixels: int | None) -> int | None:
    """data.max_image_pixels, else Pillow's decompression-bomb limit (None only if Pillow's is off)."""
    return max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS


def check_file(path: str | os.PathLike, max_pixels: int | None = None) -> str | None:
    """None when the file decodes to RGB completely, else a short reason a person can act on."""
    return decode_checked(path, max_pixels)[1]


def decode_checked(
    path: str | os.PathLike, max_pixels: int | None = None
) -> tuple[Image.Image | None, str | None]:
    """(the RGB image exactly as training reads it, None), or (None, why it is bad): one decode
    gives both the verdict and the pixels (the pixel cache keeps them)."""
    limit = pixel_limit(max_pixels)
    try:
        if os.path.getsize(path) == 0:
            return None, "empty file (0 bytes)"
        with _PILLOW_LOCK:
            return _decode(path, limit)
    except Exception as e:  # a broken file can make a decoder raise almost anything
        return None, _reason(path, e)


def _decode(path: str | os.PathLike, limit: int | None) -> tuple[Image.Image | None, str | None]:
    # Pillow's own limit is off while the header is read, so an over-limit file gets its size
    # in the reason instead of a bare DecompressionBombError; nothing is decoded yet.
    with _pillow_settings(max_pixels=None):
        img = Image.open(path)
    with img:
        width, height = img.size
        if limit is not None and width * height > limit:
            return None, (
                f"{width} x {height} = {width * height:,} pixels is over the limit of "
                f"{limit:,} (data.max_image_pixels)"
            )
        if max(width, height) > MAX_SIDE_RATIO * min(width, height):
            return None, (
                f"{width} x {height}: a side over {MAX_SIDE_RATIO}x the other "
                "(a line, not a picture)"
            )
        with _pillow_settings(max_pixels=limit):
            img.load()  # every pixel: a truncated file fails here
            # EXIF rotation and mode conversions, exactly as training does them
            return load_rgb(img).copy(), None


@contextmanager
def _pillow_settings(max_pixels: int | None) -> Iterator[None]:
    """Strict Pillow for one step: truncated data is an error (not grey padding), and a
    DecompressionBombWarning (e.g. from a later frame) is an error, not a log line."""
    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = max_pixels, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _sniff(path: str | os.PathLike) -> tuple[str | None, bytes]:
    """(format by signature or None, the first bytes) of a file, for the reason text."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None, b""
    for magic, name in _SIGNATURES:
        if head.startswith(magic) and (name != "WEBP" or head[8:12] == b"WEBP"):
            return name, head
    return None, head


def _reason(path: str | os.PathLike, error: Exception) -> str:
    fmt, head = _sniff(path)
    if isinstance(error, UnidentifiedImageError):
        if fmt:
            return f"corrupt {fmt}: Pillow cannot read its header"
        return f"not an image: no image format Pillow knows (starts with {head[:12]!r})"
    what = fmt or Path(path).suffix.lstrip(".").upper() or "file"
    if isinstance(error, (Image.DecompressionBombWarning, Image.DecompressionBombError)):
        return f"over the pixel limit (data.max_image_pixels): {error}"
    if isinstance(error, OSError) and "truncated" in str(error):
        return f"truncated {what}: {error}"
    return f"unreadable {what}: {type(error).__name__}: {error}"


def default_workers() -> int:
    """CPUs this process may use (Slurm and taskset limits included), at most 32."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    return max(1, min(n, 32))


class Verdicts(dict):
    """{path: reason} of the bad files, and how many files were decoded to find them (the rest
    had cached verdicts)."""

    def __init__(self, bad: dict[str, str], decoded: int):
        super().__init__(bad)
        self.decoded = decoded


def check_files(
    paths: Sequence[str],
    max_pixels: int | None = None,
    workers: int | None = None,
    cache: Path | None = None,
) -> Verdicts:
    """{path: reason} for every bad file among `paths`; good files are left out.

    `cache` (see `cache_file`): verdicts of an earlier call are reused for files whose size,
    mtime and pixel limit are unchanged; the file is rewritten with the verdicts of `paths`.
    One process at a time checks with the same cache (on this node, or on every node that
    shares it): the others wait, then find the verdicts there.
    """
    if cache is None:
        found = _check_all(list(paths), pixel_limit(max_pixels), workers or default_workers())
        return Verdicts(_bad(found), len(paths))
    with locks.held(_lock_file(cache), "checking these images"):
        limit = pixel_limit(max_pixels)
        stamps = {p: _stamp(p) for p in paths}
        known = _read_cache(cache)
        verdicts = _known_verdicts(paths, stamps, known, limit)
        todo = [p for p in paths if p not in verdicts]
        verdicts.update(_check_all(todo, limit, workers or default_workers()))
        if todo or len(known) != len(paths):
            _write_cache(cache, _entries(paths, stamps, limit, verdicts))
    return Verdicts(_bad(verdicts), len(todo))


def remember(
    paths: Sequence[str], bad: dict[str, str], max_pixels: int | None, cache: Path
) -> None:
    """Keep verdicts found by another decode of `paths` (the pixel cache's) in `cache`, so a
    later check or `trainer scan` of the same files decodes none of them again."""
    with locks.held(_lock_file(cache), "checking these images"):
        stamps = {p: _stamp(p) for p in paths}
        verdicts = {p: bad.get(p) for p in paths}
        _write_cache(cache, _entries(paths, stamps, pixel_limit(max_pixels), verdicts))


def _bad(verdicts: dict[str, str | None]) -> dict[str, str]:
    return {p: reason for p, reason in verdicts.items() if reason is not None}


def _known_verdicts(
    paths: Sequence[str], stamps: dict, known: dict[str, tuple], limit: int | None
) -> dict[str, str | None]:
    """The cached verdicts still valid: same size, mtime and pixel limit."""
    verdicts = {}
    for p in paths:
        entry = known.get(_key(p))
        if entry is not None and entry[:2] == stamps[p] and entry[2] == limit:
            verdicts[p] = entry[3]
    return verdicts


def _entries(paths: Sequence[str], stamps: dict, limit: int | None, verdicts: dict) -> dict:
    return {_key(p): (*stamps[p], limit, verdicts[p]) for p in paths if stamps[p]}


def _key(path: str) -> str:
    """A file's key in the cache: its absolute path (one os.path call less per file when it is
    absolute already, as the index's paths are: 10^6 calls cost seconds)."""
    return path if os.path.isabs(path) else os.path.abspath(path)


def _stamp(path: str) -> tuple[int, int] | None:
    """(size in bytes, mtime in ns): what says a file changed; None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _check_chunk(paths: list[str], limit: int | None) -> dict[str, str | None]:
    return {p: check_file(p, limit) for p in paths}


def _check_all(paths: list[str], limit: int | None, workers: int) -> dict[str, str | None]:
    bar = progress.bar(
        None, "checking images", total=len(paths), unit="images", disable=len(paths) < PROGRESS_FROM
    )
    with bar:
        if workers <= 1 or len(paths) < SERIAL_BELOW:
            out = {}
            for p in paths:
                out[p] = check_file(p, limit)
                bar.update()
            return out
        return _check_in_pool(paths, limit, workers, bar)


def _check_in_pool(
    paths: list[str], limit: int | None, workers: int, bar: Any
) -> dict[str, str | None]:
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    out: dict[str, str | None] = {}
    # Workers leave Ctrl-C to this process (else each prints a KeyboardInterrupt traceback);
    # on an interruption the chunks not started are dropped, not decoded before exiting.
    pool = ProcessPoolExecutor(
        min(workers, len(chunks)), mp_context=_mp_context(), initializer=ignore_ctrl_c
    )
    try:
        with ctrl_c_held():  # the workers are forked in submit()
            futures = [pool.submit(_check_chunk, c, limit) for c in chunks]
        for future in as_completed(futures):
            part = future.result()
            out.update(part)
            bar.update(len(part))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _mp_context() -> multiprocessing.context.BaseContext:
    # fork on Linux: workers inherit the imported Pillow/numpy/trainer (spawn would import torch
    # again, seconds per worker). Safe in a process that holds torch threads or a process group,
    # like DataLoader workers: the children decode with Pillow and numpy only, never torch.
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def cache_dir() -> Path:
    """trainer's own small caches: $TRAINER_CACHE_DIR, else $XDG_CACHE_HOME/trainer, else
    ~/.cache/trainer. A home shared by all nodes is fine: files are replaced atomically, and
    one process at a time fills them (`trainer.locks`)."""
    if os.environ.get("TRAINER_CACHE_DIR"):
        return Path(os.environ["TRAINER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trainer"


def cache_file(root: str | Path) -> Path:
    """The verdicts for the images under `root`: CACHE_DIR/scan/<hash of the absolute root>.json."""
    digest = hashlib.sha256(str(Path(root).resolve()).encode("utf-8")).hexdigest()[:24]
    return cache_dir() / "scan" / f"{digest}.json"


def _lock_file(cache: Path) -> Path:
    return cache.with_name(cache.name + ".lock")


def _read_cache(path: Path) -> dict[str, tuple]:
    """{absolute path: (size, mtime_ns, limit, reason)}; {} for a missing, corrupt or stale file
    (written by another cache version or Pillow version, whose verdicts may differ)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("version") != CACHE_VERSION or doc.get("pillow") != PIL.__version__:
            return {}
        bad = {int(i): reason for i, reason in doc["bad"].items()}
        columns = zip(doc["paths"], doc["sizes"], doc["mtimes"], doc["limits"])
        return {
            p: (size, mtime, limit, bad.get(i)) for i, (p, size, mtime, limit) in enumerate(columns)
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _write_cache(path: Path, entries: dict[str, tuple]) -> None:
    """Atomically (temp file + rename), so a reader on another rank never sees half a file.
    A cache that cannot be written (read-only home) only costs a re-check next time."""
    rows = list(entries.values())
    doc = {
        "version": CACHE_VERSION,
        "pillow": PIL.__version__,
        "paths": list(entries),
        "sizes": [row[0] for row in rows],
        "mtimes": [row[1] for row in rows],
        "limits": [row[2] for row in rows],
        "bad": {str(i): row[3] for i, row in enumerate(rows) if row[3] is not None},
    }
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError:
        pass
    finally:  # also when interrupted (Ctrl-C) mid-write: no temp file is left behind
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
