"""One process at a time on a piece of shared work (a cache build), on this node or across the
nodes that share its folder.

POSIX record locks (`fcntl.lockf`): the kernel frees them when their process dies, however it
dies, so a crashed builder never leaves the others waiting; NFS carries them to the other nodes.
The lock file is removed by whoever holds it when done, so finished work leaves nothing behind.
Where locks are not available (an NFS mounted without locking) the work runs unlocked: each
process then does it itself, and atomic renames keep the result whole.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks; the work runs unlocked
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def held(path: Path, what: str, say: Callable[[str], None] = print) -> Iterator[bool]:
    """Hold the lock file `path` for the body: wait (saying once, with `say`, for whom and for
    `what`) while another process holds it. Yields False when locking is not available."""
    fd = _acquire(path, what, say) if fcntl is not None else None
    try:
        yield fd is not None
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)  # before unlocking: a waiter on this file then sees it is gone
            os.close(fd)  # closing releases the lock


def _acquire(path: Path, what: str, say: Callable[[str], None]) -> int | None:
    """An open, locked descriptor of `path` (created if missing), or None without lock support.
    A file unlinked by its last holder while this process waited on it is let go and the lock
    taken again on the new file, so two processes never hold two files of the same name."""
    told = False
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return None
        try:
            if not _try_lock(fd):
                if not told:
                    say(f"waiting for {_holder(fd)}, which is {what}")
                    told = True
                fcntl.lockf(fd, fcntl.LOCK_EX)  # blocks until the holder is done (or dies)
            if _same_file(fd, path):
                _write_holder(fd)
                return fd
        except OSError:  # ENOLCK: a file system without locking
            os.close(fd)
            return None
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):  # EAGAIN / EACCES: held by another process
        return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _write_holder(fd: int) -> None:
    """Who holds the lock, for the message of those who wait."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}".encode(), 0)


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
    except OSError:
        return "another process"
