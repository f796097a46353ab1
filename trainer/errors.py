"""What the CLI says when something fails: one line for a user's or the environment's mistake,
the traceback for a bug.

Imports nothing heavy: `trainer recipes` and `trainer config` use it too, and the error types of
modules that were never imported cannot have been raised, so they are looked up in sys.modules.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

BUG_LINE = "this is a bug in trainer; please report it with the command and the traceback above"

# (module, class) of the errors whose message already names the thing and the fix.
USER_ERRORS = (
    ("trainer.config", "ConfigError"),
    ("trainer.data.layout", "DataError"),
    ("trainer.model.safeload", "ModelError"),
    ("trainer.train.checkpoint", "CheckpointError"),
    ("trainer.model.export", "ExportError"),
    ("trainer.files", "OutputError"),
)

# Out-of-space errors of libraries that do not raise OSError (safetensors' Rust writer).
NO_SPACE_TEXT = re.compile(
    r"No space left on device|os error 28\b|Disk quota exceeded|os error 122\b"
)
# What a write can fail with that is about where it writes (not, say, a network socket).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})
# An OSError re-raised from a DataLoader worker keeps only its text: "[Errno 13] ...: 'path'".
ERRNO_TEXT = re.compile(r"\[Errno (\d+)\] ([^:]+?)(?:: '(.*)')?$")


def user_error_types() -> tuple[type[BaseException], ...]:
    types = []
    for module, name in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type):
            types.append(cls)
    return tuple(types)


def one_line(error: BaseException) -> str:
    """The message of an error; from a DataLoader worker only its last line, not the traceback
    text torch wraps around it."""
    text = str(error).strip()
    if "Original Traceback" in text:
        return text.splitlines()[-1].split(": ", 1)[-1]
    return text


def user_message(
    error: BaseException, write_hint: str = "", argv: Sequence[str] = ()
) -> str | None:
    """One line naming the thing and the fix, or None when `error` is a bug (keep its traceback).

    `write_hint` says how to write elsewhere with this command (e.g. "--out"), for a full disk;
    `argv` (the command line) lets an error that names no path find the one it was about.
    """
    if isinstance(error, user_error_types()):
        return one_line(error)
    if isinstance(error, RuntimeError) and str(error).startswith(NO_HOME):
        return unknown_user_message(argv)
    if isinstance(error, OSError):
        return os_error_message(_with_errno(error), write_hint)
    if NO_SPACE_TEXT.search(str(error)):  # safetensors' own error type, not an OSError
        return no_space_message(None, _no_space_code(error, "."), write_hint)
    if type(error).__name__ == "OutOfMemoryError" and "torch" in sys.modules:
        return (
            "out of GPU memory: use a smaller train.batch_size (or --batch-size), a smaller "
            "data.image_size, or train.mixed_precision=bf16"
        )
    return None


# pathlib's Path.expanduser() on '~name/...' when there is no user 'name' (it names no path).
NO_HOME = "Could not determine home directory"
TILDE_USER = re.compile(r"(?:^|=)(~([^/=\s]*)[^=\s]*)$")


def unknown_user_message(argv: Sequence[str]) -> str:
    """'~name/x': no user 'name' on this machine; read the path back from the command line."""
    for arg in argv:
        match = TILDE_USER.search(arg)
        if match and not _home_of(match[2]):
            user = f"user {match[2]!r}" if match[2] else "home folder (HOME is not set)"
            return f"{match[1]!r}: no {user} on this machine; give the full path"
    return "a path starting with '~name' names no user on this machine; give the full path"


def _home_of(user: str) -> str | None:
    """The home folder `~user` stands for ('' for the current user), None when there is none."""
    home = os.path.expanduser(f"~{user}")
    return None if home.startswith("~") else home


def _with_errno(error: OSError) -> OSError:
    """A DataLoader worker's OSError comes back as text only: read errno and path from it."""
    if error.errno is not None:
        return error
    match = ERRNO_TEXT.search(one_line(error))
    if not match:
        return error
    return (
        OSError(int(match[1]), match[2], match[3]) if match[3] else OSError(int(match[1]), match[2])
    )


def os_error_message(error: OSError, write_hint: str = "") -> str:
    """What the OS refused, on which path, and what to do about it."""
    code, path = error.errno, error.filename
    if code is None:
        return one_line(error)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return no_space_message(path, code, write_hint)
    if path is None:
        return f"{error.strerror or error}"
    shown = f"{path}" + (f" -> {error.filename2}" if error.filename2 else "")
    fix = _FIXES.get(code)
    if code == errno.EROFS:
        return f"{shown}: read-only file system ({mount_point(path)}); write to another path"
    if fix is None:
        return f"{shown}: {error.strerror}"
    return f"{shown}: {error.strerror}; {fix}"


_FIXES = {
    errno.EACCES: "check its owner and mode (ls -ld) and give your user access, or use another path",
    errno.EPERM: "the system does not allow this here; check ownership (ls -ld) or use another path",
    errno.ENOENT: "check the path (a typo, or a folder that was moved or not mounted?)",
    errno.ENOTDIR: "a part of this path is a file, not a folder; rename that file or use another path",
    errno.EISDIR: "this is a folder; give a file path",
    errno.EEXIST: "something already exists there; move it away or choose another path",
    errno.ELOOP: "a symbolic link in this path points back to itself; fix or remove the link",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.ENOTEMPTY: "the folder is not empty; move its contents away or choose another path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or use fewer workers",
    errno.ENFILE: "too many open files on this system: use fewer workers",
    errno.EIO: "the disk or network file system failed to read or write; check it (dmesg)",
    errno.ESTALE: "a network file system lost this file; check the mount and retry",
    errno.EXDEV: "source and target are on different file systems; use one file system",
}


def no_space_message(path: str | os.PathLike | None, code: int, write_hint: str = "") -> str:
    """'no space left on MOUNT (FS) while writing PATH' and the fix."""
    what = "disk quota exceeded" if code == errno.EDQUOT else "no space left"
    where = "" if path is None else f" on {_device(path)} while writing {path}"
    fix = "free space there" + (
        f", or write elsewhere with {write_hint}" if write_hint else ", or write elsewhere"
    )
    return f"{what}{where}: {fix}"


def _device(path: str | os.PathLike) -> str:
    mount = mount_point(path)
    fs = _filesystem(mount)
    return f"{mount} ({fs})" if fs else mount


def mount_point(path: str | os.PathLike) -> str:
    """The mount point holding `path` (which need not exist yet): walk up with os.path.ismount."""
    current = os.path.abspath(os.fspath(path))
    while not os.path.lexists(current) and current != os.path.dirname(current):
        current = os.path.dirname(current)
    current = os.path.realpath(current)
    while not os.path.ismount(current):
        current = os.path.dirname(current)
    return current


def _filesystem(mount: str) -> str | None:
    """'SOURCE, TYPE' of a mount point from /proc/mounts (Linux); None elsewhere."""
    try:
        lines = Path("/proc/mounts").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    found = None
    for line in lines:  # the last entry of a mount point is the one on top
        parts = line.split()
        if len(parts) >= 3 and parts[1].replace("\\040", " ") == mount:
            found = parts[2] if parts[0] == parts[2] else f"{parts[0]}, {parts[2]}"
    return found


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Name `path` in the errors of writing it: a bare OSError from file.write() has no filename,
    safetensors reports a full disk as its own error type, torch.save as 'unexpected pos'."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno in WRITE_ERRNOS:
            raise OSError(e.errno, e.strerror, os.fspath(path)) from e
        raise
    except Exception as e:
        code = _no_space_code(e, path)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), os.fspath(path)) from e


def _no_space_code(error: Exception, path: str | os.PathLike) -> int | None:
    text = str(error)
    if NO_SPACE_TEXT.search(text):
        quota = "quota" in text.lower() or "os error 122" in text
        return errno.EDQUOT if quota else errno.ENOSPC
    if isinstance(error, RuntimeError) and _nearly_full(path):
        return errno.ENOSPC
    return None


def _nearly_full(path: str | os.PathLike) -> bool:
    """Under 64 KiB left where `path` is: torch's writers say only 'file write failed'."""
    try:
        st = os.statvfs(mount_point(path))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024
