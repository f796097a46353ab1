"""The run folder's lock: one run per output_dir, and a lock left by a run that ended is taken over.

RUN_DIR/trainer.lock holds the host, pid (with its start time, which tells a reused pid apart),
start time and Slurm job of the run using the folder, written with O_CREAT|O_EXCL. A second run is
refused, naming the holder; a lock left by a dead process on this host, or by an earlier start of
the same (requeued) Slurm job, is taken over with a note. Another machine's lock is never taken.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.config import ConfigError

LOCK = "trainer.lock"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (ticks since boot; Linux), which tells a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _slurm_restarts() -> int:
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        return 0


def _me() -> dict[str, Any]:
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "pid_start": _process_start(pid),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart": _slurm_restarts(),
        "token": uuid.uuid4().hex,
    }


def _read_lock(path: Path) -> dict | None:
    """The holder written in a lock file; None if the file is gone; ConfigError if unreadable."""
    try:
        for _ in range(20):  # created but not yet written by a run starting this very moment
            text = path.read_text(encoding="utf-8")
            if text or time.time() - path.stat().st_mtime > 5:
                break
            time.sleep(0.1)
        holder = json.loads(text)
        if not isinstance(holder, dict):
            raise ValueError("not a JSON object")
        return holder
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"output_dir: its lock file {str(path)!r} cannot be read ({e}); a run may be starting "
            f"there, or one crashed while taking it: if no run uses the folder, delete the file"
        ) from None


def _gone(holder: dict) -> str | None:
    """Why the lock's holder has certainly ended, or None when it may still run."""
    job = os.environ.get("SLURM_JOB_ID")
    if (
        job
        and holder.get("slurm_job") == job
        and holder.get("slurm_restart", 0) < _slurm_restarts()
    ):
        return f"an earlier start of Slurm job {job}, which was requeued"
    if holder.get("host") != socket.gethostname():
        return None  # another machine's processes cannot be checked from here
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return "it names no process"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"process {pid} has ended"
    except PermissionError:
        pass  # alive, another user's
    started = _process_start(pid)
    if holder.get("pid_start") and started and started != holder["pid_start"]:
        return f"process {pid} has ended (the pid now belongs to another process)"
    return None


def _holder(holder: dict) -> str:
    """'the run of pid 12 on host gpu1 since 2026-...', leaving out what the lock does not say."""
    parts = [
        f"{what} {holder[key]}"
        for what, key in (("pid", "pid"), ("on host", "host"), ("since", "since"))
        if holder.get(key) not in (None, "")
    ]
    return f"the run of {' '.join(parts)}" if parts else "a run that its lock file does not name"


def _in_use(run_dir: Path, holder: dict) -> ConfigError:
    where = holder.get("host")
    text = (
        f"output_dir {str(run_dir)!r} is in use by {_holder(holder)}; wait for it or "
        f"pick another output_dir"
    )
    if where != socket.gethostname():
        text += f" (if that run has ended, e.g. its machine crashed, delete {run_dir / LOCK})"
    return ConfigError(text)


def _take_over(path: Path, stale: dict) -> bool:
    """Remove a stale lock unless another run replaced it meanwhile; False if one did."""
    moved = path.with_name(f"{LOCK}.stale-{os.getpid()}")
    try:
        os.rename(path, moved)  # atomic: of two runs taking over, one gets the stale file
    except FileNotFoundError:
        return True
    if _read_lock(moved) == stale:
        moved.unlink()
        return True
    try:  # it was a fresh lock of a run that took over first: give it back
        os.link(moved, path)
    except FileExistsError:
        pass
    moved.unlink()
    return False


def take_lock(run_dir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Create RUN_DIR/trainer.lock (O_CREAT|O_EXCL) naming this process; ConfigError if held."""
    path, mine = run_dir / LOCK, _me()
    for _ in range(5):  # another run may remove or take over the file between two steps
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder is None:
                continue
            why = _gone(holder)
            if why is None:
                raise _in_use(run_dir, holder) from None
            if not _take_over(path, holder):
                raise _in_use(run_dir, _read_lock(path) or holder) from None
            say(f"note: taking over the lock of {run_dir}: {_holder(holder)} left it ({why})")
            continue
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(mine, indent=1) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except BaseException:  # e.g. a full disk: no empty lock may stay behind
            path.unlink(missing_ok=True)
            raise
        return mine
    raise ConfigError(f"output_dir: {str(path)!r} keeps changing: another run is starting there")


def release_lock(run_dir: Path, mine: dict[str, Any]) -> None:
    """Remove the lock if it is still this run's."""
    path = run_dir / LOCK
    try:
        holder = _read_lock(path)
    except ConfigError:
        return
    if holder is not None and holder.get("token") == mine["token"]:
        path.unlink(missing_ok=True)
