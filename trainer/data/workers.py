"""Helper processes (image checks, the pixel cache, DataLoader workers) and the signals meant for
the run: Ctrl-C is held while they are forked and ignored in them, and they are killed at exit."""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import signal
from collections.abc import Iterator

# What the run handles itself (train.preemption): Slurm's warning, scancel, Ctrl-C.
RUN_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def ctrl_c_held() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT blocked) while helper processes are forked: a child inherits the
    mask, so one forked just before a Ctrl-C cannot take it (and print a KeyboardInterrupt
    traceback) before `ignore_ctrl_c` runs in it. This process gets the held Ctrl-C at the end."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def ignore_ctrl_c() -> None:
    """Initializer of helper process pools (image checks, the pixel cache): Ctrl-C is the
    parent's to handle; a worker would print a KeyboardInterrupt traceback each."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # held by ctrl_c_held


def ignore_in_workers() -> None:
    """DataLoader workers leave SIGUSR1/SIGTERM/SIGINT to their process: Slurm signals every
    process of a job and Ctrl-C the terminal's whole process group, and a worker ended by it
    would end the run before the checkpoint."""
    for sig in RUN_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def kill_workers_at_exit() -> None:
    """Workers that ignore SIGTERM would hang the interpreter's exit: multiprocessing ends its
    daemonic children (the DataLoader workers of loaders never garbage-collected, e.g. persistent
    eval workers) with SIGTERM and then joins them. This registers, once, an exit hook that runs
    before it (atexit is last in, first out) and ends them with SIGKILL instead."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_kill_daemonic_children)
        _exit_hook_registered = True


_exit_hook_registered = False


def _kill_daemonic_children() -> None:
    # torch's SIGCHLD handler would raise "DataLoader worker ... is killed" at the first one
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    children = [c for c in multiprocessing.active_children() if c.daemon]
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout=5)
