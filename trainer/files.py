"""Writing the user's output files: whole or not at all, with the modes their umask asks for,
and never over a file this program did not write."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.errors import writing


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def apply_umask(folder: Path) -> None:
    """Give `folder` and every file below it the modes a plain open() would have (0644 under
    umask 022): libraries that write through tempfile.mkstemp (safetensors) leave files 0600,
    unreadable for the group a model folder is shared with."""
    mask = current_umask()
    os.chmod(folder, 0o777 & ~mask)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temp file renamed into place: a full disk or a crash
    leaves the earlier file as it was instead of half a new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with writing(path), os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class OutputError(ValueError):
    """An output path holds something this program did not write there: refused before any work
    (exit 2), so the user's file is never replaced. The message names the flag and the fix."""


def check_replaceable(
    path: Path, flag: str, ours: Callable[[Path], bool], what: str, *, folder: bool = False
) -> None:
    """May `flag PATH` be written? Yes when it is new, an empty file or folder, or what this
    command wrote there before (`ours(path)`); else OutputError. Call it before any work, so a
    refusal leaves everything as it was. `what` completes "is not ..." in the message."""
    if not path.exists():  # a dangling link too: os.replace replaces the link, not its target
        return
    shown = f"{flag} {path}"
    if folder:
        if not path.is_dir():
            raise OutputError(f"{shown}: is a file, not a folder; give a new or empty folder")
        if not any(path.iterdir()) or ours(path):
            return
        raise OutputError(
            f"{shown}: holds other files and is not {what}; nothing was changed: "
            "choose a new or empty folder"
        )
    if path.is_dir():
        raise OutputError(f"{shown}: is a folder; give a file path")
    if not path.is_file():  # /dev/null, a pipe: replacing it with a file would be worse
        raise OutputError(f"{shown}: is not a regular file; give a file path")
    if path.stat().st_size == 0 or ours(path):
        return
    raise OutputError(
        f"{shown}: exists and is not {what}; nothing was changed: choose a new path or remove it"
    )


def read_json_or_none(path: Path, limit: int = 1 << 30) -> Any:
    """The JSON in `path`, or None when it is not JSON text (or over `limit` bytes): for telling
    whether an existing file is one this program wrote. OSError (unreadable) propagates."""
    if path.stat().st_size > limit:
        return None
    with open(path, "rb") as f:  # not JSON at all (an image, a video): no need to read it whole
        if f.read(64).lstrip()[:1] not in (b"{", b"["):
            return None
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def first_line(path: Path, limit: int = 1 << 16) -> str | None:
    """The first line of a text file without its line end, None when it is not UTF-8 text."""
    with open(path, "rb") as f:
        head = f.readline(limit)
    try:
        return head.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        return None
