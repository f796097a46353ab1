"""Writing the user's output files: whole or not at all, with the modes their umask asks for."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

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
