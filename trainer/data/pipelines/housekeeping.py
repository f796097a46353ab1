"""What a pixel cache folder keeps: the caches in use. Build folders of builds that can no
longer finish (KEY.tmp-HOST-PID), and complete caches of an older FORMAT, which this version
never reads, are removed when a new cache is built there. Only what the cache wrote is touched: a
folder named by a cache key holding pixels.u8 and a meta.json with the cache's own fields.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

STALE_AFTER_S = 24 * 3600  # a build folder of another host untouched this long is abandoned
KEY = re.compile(r"[0-9a-f]{32}")  # pixelcache.cache_key
# A build's folder: KEY.tmp-HOST-PID (KEY.tmp-PID before hosts were named); nothing else is one
BUILD = re.compile(KEY.pattern + r"\.tmp-(?:(?P<host>.+)-)?(?P<pid>\d+)")
CACHE_FIELDS = {"images", "size", "bytes", "format"}  # in the meta.json of every format


def tidy(root: Path, current: int) -> list[tuple[Path, int]]:
    """Remove what can never be used again under `root`: (folder, bytes) of each removed."""
    return remove_stale_builds(root) + remove_old_formats(root, current)


def remove_old_formats(root: Path, current: int) -> list[tuple[Path, int]]:
    """Delete the complete caches under `root` whose meta.json has a format before `current`:
    (folder, bytes) of each."""
    removed = []
    for folder in _children(root):
        meta = _meta(folder)
        if KEY.fullmatch(folder.name) and meta and (folder / "pixels.u8").is_file():
            if isinstance(meta["format"], int) and meta["format"] < current:
                nbytes = _size(folder)
                shutil.rmtree(folder, ignore_errors=True)
                removed.append((folder, nbytes))
    return removed


def _meta(folder: Path) -> dict | None:
    """The cache's meta.json when it has the fields every format wrote; else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and CACHE_FIELDS <= meta.keys() else None


def _children(root: Path) -> list[Path]:
    try:
        return [p for p in root.iterdir() if p.is_dir()]
    except OSError:
        return []


def remove_stale_builds(root: Path, now: float | None = None) -> list[tuple[Path, int]]:
    """Delete the build folders (KEY.tmp-HOST-PID) of builds that can no longer finish: of this
    host when that process is gone (killed, out of memory), of any host when nothing in them
    changed for STALE_AFTER_S (the cache folder may be shared by nodes, whose processes cannot
    be asked). A live build, here or on another node, is never touched, nor a folder not named
    like a build. Returns (folder, bytes) of what went."""
    now = time.time() if now is None else now
    removed = []
    for folder in _children(root):
        build = BUILD.fullmatch(folder.name)
        if build is None:
            continue
        here = build["host"] == socket.gethostname()
        dead_here = here and not _alive(int(build["pid"]))
        if dead_here or now - _last_change(folder) > STALE_AFTER_S:
            nbytes = _size(folder)
            shutil.rmtree(folder, ignore_errors=True)
            removed.append((folder, nbytes))
    return removed


def _size(folder: Path) -> int:
    """Bytes the files directly in `folder` take on disk (a cache folder has no sub-folders)."""
    try:
        return sum(p.stat().st_blocks * 512 for p in folder.iterdir() if p.is_file())
    except OSError:
        return 0


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
