"""A folder of the awkward files people's image folders hold: broken ones, and odd but good ones.

Shared by tests/unit/test_scan.py and tests/integration/test_bad_files.py.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# name -> the start of the reason `check_file` must give
BAD = {
    "empty.jpg": "empty file (0 bytes)",
    "truncated.jpg": "truncated JPEG",
    "truncated.png": "truncated PNG",
    "text.jpg": "not an image",
    "huge.png": "20000 x 20000 = 400,000,000 pixels is over the limit",
}
# decode fine once converted to RGB: must not be reported
GOOD_ODD = ["cmyk.jpg", "rgba.png", "palette.png", "gray16.png", "exif6.jpg"]
# not images by their name: ignored, neither indexed nor reported as bad
IGNORED = [".DS_Store", "Thumbs.db", "._photo.jpg"]


def _noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


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


def write_corpus(folder: Path) -> Path:
    """Every file of BAD, GOOD_ODD and IGNORED in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    jpeg = _encoded(_noise((64, 48)), "JPEG")
    png = _encoded(_noise((64, 48)), "PNG")
    files = {
        "empty.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "text.jpg": b"<html><body>404 Not Found</body></html>\n",
        "huge.png": huge_png_header(20000, 20000),
        "cmyk.jpg": _encoded(Image.new("RGB", (16, 16), (255, 0, 0)).convert("CMYK"), "JPEG"),
        "rgba.png": _encoded(Image.new("RGBA", (16, 16), (0, 0, 255, 128)), "PNG"),
        "palette.png": _encoded(_noise((16, 16)).convert("P"), "PNG"),
        "gray16.png": _encoded(Image.fromarray(np.full((16, 16), 32768, np.uint16)), "PNG"),
        "exif6.jpg": exif_rotated_jpeg(6),
        ".DS_Store": b"\0\0\0\1Bud1",
        "Thumbs.db": b"\xd0\xcf\x11\xe0",
        "._photo.jpg": b"\0\5\26\7",  # macOS resource fork next to a copied photo
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder
