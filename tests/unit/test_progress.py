"""Progress in a log is plain lines at a steady interval; in a terminal it is a bar."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios

from tests.conftest import REPO
from trainer import progress


def test_a_log_gets_plain_lines_with_count_rate_eta_and_values(monkeypatch, capsys):
    monkeypatch.setenv("TRAINER_PROGRESS_SECONDS", "0")
    bar = progress.bar(range(4), "train epoch 3")
    assert isinstance(bar, progress.LogLines)  # pytest's captured stderr is not a terminal
    for i in bar:
        bar.set_postfix(loss=f"{1 / (i + 1):.4f}")
    err = capsys.readouterr().err
    assert "\r" not in err and "|" not in err
    lines = err.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("train epoch 3: 1/4 batches, ")
    assert " batches/s, eta " in lines[0]
    assert lines[-1].startswith("train epoch 3: 4/4 batches") and lines[-1].endswith("loss=0.2500")


def test_a_log_gets_no_line_for_work_shorter_than_the_interval(monkeypatch, capsys):
    monkeypatch.setenv("TRAINER_PROGRESS_SECONDS", "30")
    with progress.bar(None, "checking images", total=10, unit="images") as bar:
        for _ in range(10):
            bar.update()
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_a_bar():
    """Under a pseudo-terminal stderr is a tty: tqdm draws its bar (carriage returns)."""
    code = "from trainer import progress\nfor _ in progress.bar(range(3), 'work'): pass\n"
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 80 columns
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdin=follower, stdout=follower, stderr=follower
    )
    out = b""
    # The follower stays open here until the end: on Linux, once every follower fd is closed the
    # leader reads EIO and what the child wrote but was not yet read is gone.
    while proc.poll() is None or select.select([leader], [], [], 0.2)[0]:
        if select.select([leader], [], [], 0.2)[0]:
            out += os.read(leader, 65536)
    os.close(follower)
    os.close(leader)
    assert proc.returncode == 0, out
    assert b"\r" in out and b"work: " in out and b"%|" in out  # a bar, redrawn in place
