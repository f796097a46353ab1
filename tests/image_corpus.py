"""One corpus of the awkward files people's image folders really hold: broken ones, odd but good
ones, ones that are not images by their name, and ones the file system serves badly.

Each entry says what trainer must make of it:
  BAD        skipped and named with a reason (`check_file`, bad_files.csv, `trainer scan`)
  GOOD_ODD   odd but good: decoded to RGB and trained on
  IGNORED    not images by their name: neither indexed nor reported as bad
and, written only by `write_corpus(folder, doors=True)` (the older tests count the plain files
of a folder exactly, and these need the process's help: `hostile_doors`):
  NOT_LISTED    HEIC and AVIF photos: walk.IMAGE_EXTENSIONS lacks them, so they are ignored by
                their name like IGNORED (and named in the "ignored as not images" note)
  BROKEN_LINK   a symlink to a file that is gone: the walk's "broken links skipped" note
  DOOR_BAD      bad like BAD, but by how the file is served: a file root cannot read either,
                and one deleted between the listing and its decode

Shared by tests/unit/test_scan.py, tests/integration/test_bad_files.py and
tests/integration/test_hostile_files.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# name -> the start of the reason `check_file` must give
BAD = {
    "empty.jpg": "empty file (0 bytes)",
    "truncated.jpg": "truncated JPEG",
    "truncated.png": "truncated PNG",
    "text.jpg": "not an image",  # notes saved under a photo's name
    "html.jpg": "not an image",  # a scraper's 404 page saved as .jpg
    # over trainer's limit (Image.MAX_IMAGE_PIXELS = 360M) but under twice it: Pillow only warns
    "huge.png": "20000 x 20000 = 400,000,000 pixels is over the limit",
    # over twice the limit: Pillow's Image.open raises DecompressionBombError (not an OSError)
    "bomb.png": "30000 x 30000 = 900,000,000 pixels is over the limit",
    # a few KB under any pixel limit, but its resize to shorter side S is 5000 S tall (GBs)
    "thin.png": "1 x 5000: a side over 100x the other",
}
# decode fine once converted to RGB: must not be reported
GOOD_ODD = [
    "cmyk.jpg",
    "rgba.png",
    "palette.png",
    "gray16.png",
    "exif6.jpg",
    "dot.png",  # 1 x 1 pixel
    "banner.png",  # 320 x 32: its window is capped at 3:2, not the cache's row width
    "animated.gif",  # 3 frames: the first is the image
    "pages.tif",  # 2 pages: the first is the image
]
# not images by their name: ignored, neither indexed nor reported as bad
IGNORED = [".DS_Store", "Thumbs.db", "._photo.jpg"]

# --- written with doors=True only
NOT_LISTED = ["IMG_0001.heic", "IMG_0002.avif"]
BROKEN_LINK = "moved.jpg"
UNREADABLE = "locked.jpg"  # mode 000; root is refused too inside `hostile_doors`
VANISHING = "deleted.jpg"  # deleted right after the first listing that names it
DOOR_BAD = {
    UNREADABLE: "unreadable JPG: PermissionError",
    VANISHING: "unreadable JPG: FileNotFoundError",
}


def _noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _frames(fmt: str, n: int) -> bytes:
    """n different 24 x 16 frames (pages) in one GIF or TIFF file."""
    frames = [_noise((24, 16), seed) for seed in range(n)]
    return _encoded(frames[0], fmt, save_all=True, append_images=frames[1:])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height 8-bit grey pixels, with one row of data: Pillow
    reads the size from the header; decoding it all would take width x height bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))  # filter byte + one row
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    """40 x 20 (wide) black JPEG with a red 10 x 10 block in its top-left corner, tagged to be
    displayed rotated: 6 = 90 degrees clockwise, so the block lands top-right of a 20 x 40 image."""
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 10, 10))
    exif = img.getexif()
    exif[0x0112] = orientation
    return _encoded(img, "JPEG", exif=exif, quality=95)


def _iso_media(brand: bytes) -> bytes:
    """The first box of a HEIC or AVIF file (ISO base media 'ftyp'); the files are ignored by
    their name, so nothing reads further."""
    box = b"ftyp" + brand + b"\0\0\0\0mif1" + brand
    return struct.pack(">I", 4 + len(box)) + box


def _plain_files() -> dict[str, bytes]:
    jpeg = _encoded(_noise((64, 48)), "JPEG")
    png = _encoded(_noise((64, 48)), "PNG")
    return {
        "empty.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "text.jpg": b"holiday 2019, the good ones are in the other folder\n",
        "html.jpg": b"<!DOCTYPE html>\n<html><body><h1>404 Not Found</h1></body></html>\n",
        "huge.png": huge_png_header(20000, 20000),
        "bomb.png": huge_png_header(30000, 30000),
        "cmyk.jpg": _encoded(Image.new("RGB", (16, 16), (255, 0, 0)).convert("CMYK"), "JPEG"),
        "rgba.png": _encoded(Image.new("RGBA", (16, 16), (0, 0, 255, 128)), "PNG"),
        "palette.png": _encoded(_noise((16, 16)).convert("P"), "PNG"),
        "gray16.png": _encoded(Image.fromarray(np.full((16, 16), 32768, np.uint16)), "PNG"),
        "exif6.jpg": exif_rotated_jpeg(6),
        "dot.png": _encoded(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"),
        "thin.png": _encoded(_noise((1, 5000)), "PNG"),
        "banner.png": _encoded(_noise((320, 32)), "PNG"),
        "animated.gif": _frames("GIF", 3),
        "pages.tif": _frames("TIFF", 2),
        ".DS_Store": b"\0\0\0\1Bud1",
        "Thumbs.db": b"\xd0\xcf\x11\xe0",
        "._photo.jpg": b"\0\5\26\7",  # macOS resource fork next to a copied photo
    }


def write_corpus(folder: Path, doors: bool = False) -> Path:
    """Every file of BAD, GOOD_ODD and IGNORED in `folder`; with `doors`, also NOT_LISTED,
    BROKEN_LINK, UNREADABLE and VANISHING (run the commands inside `hostile_doors`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in _plain_files().items():
        (folder / name).write_bytes(data)
    if doors:
        (folder / NOT_LISTED[0]).write_bytes(_iso_media(b"heic"))
        (folder / NOT_LISTED[1]).write_bytes(_iso_media(b"avif"))
        (folder / BROKEN_LINK).symlink_to(folder.parent / "gone" / BROKEN_LINK)
        good = _encoded(_noise((32, 32), 7), "JPEG")
        (folder / VANISHING).write_bytes(good)
        (folder / UNREADABLE).write_bytes(good)
        (folder / UNREADABLE).chmod(0)
    return folder


@contextlib.contextmanager
def hostile_doors(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Iterator[None]:
    """While it is open, UNREADABLE in `folder` cannot be read (by root either) and VANISHING is
    deleted right after the first listing of image files that names it."""
    vanishing = str(folder / VANISHING)
    _delete_after_listing(monkeypatch, vanishing)
    with _reads_checked_as_for_users():
        yield


def _delete_after_listing(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """The file vanishes between listing and decoding, as when a sync client or a colleague
    removes it while trainer runs: every command lists image files through walk.list_images
    (layout and predict/export by their own references to it)."""
    from trainer.data import layout, walk

    listed = walk.list_images

    def list_then_delete(*args, **kwargs):
        found = listed(*args, **kwargs)
        if path in found and os.path.exists(path):
            os.unlink(path)
        return found

    monkeypatch.setattr(walk, "list_images", list_then_delete)
    monkeypatch.setattr(layout, "list_images", list_then_delete)


# Linux capabilities that let root read any file whatever its mode (capability(7)).
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


@contextlib.contextmanager
def _reads_checked_as_for_users() -> Iterator[None]:
    """The tests run as root, for whom mode 000 stops nothing. Chosen over a folder named like an
    image (the walk descends into it: not a file that fails to open) and over patching open()
    (torchvision and the decoders read files in C): drop the two capabilities that let root
    ignore a file's mode from this thread's effective set (threads and forked workers started
    here inherit it), so the kernel itself refuses the read with EACCES, as it does for any
    other user. They stay permitted, so they are raised again on the way out."""
    if os.geteuid() != 0:
        yield  # mode 000 already refuses
        return
    if not sys.platform.startswith("linux"):
        pytest.skip("root reads every file here: an unreadable file needs Linux capabilities")
    libc = ctypes.CDLL(None, use_errno=True)
    header, caps = _CapHeader(_CAP_VERSION_3, 0), (_CapData * 2)()
    if libc.capget(ctypes.byref(header), caps) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    saved = caps[0].effective
    caps[0].effective &= ~((1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH))
    if libc.capset(ctypes.byref(header), caps) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    try:
        yield
    finally:
        caps[0].effective = saved
        libc.capset(ctypes.byref(header), caps)
