"""One process at a time holds a lock file; the others wait and say for whom; a holder that dies
(however) frees it; nothing is left behind."""

import os
import signal
import subprocess
import sys
import time

from trainer import locks

HOLDER = """
import sys, time
from pathlib import Path
from trainer import locks
with locks.held(Path(sys.argv[1]), "testing"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_waits_says_for_whom_and_then_holds(tmp_path):
    path = tmp_path / "work.lock"
    proc = _holder(path, 1.5)
    said = []
    start = time.perf_counter()
    with locks.held(path, "building the thing", said.append) as locked:
        waited = time.perf_counter() - start
        assert locked
    proc.wait()
    assert waited > 1.0  # the holder's 1.5 s sleep, less its start-up after "held"
    assert said == [
        f"waiting for process {proc.pid} on {os.uname().nodename}, which is building the thing"
    ]
    assert not path.exists()  # removed by its last holder


def test_a_killed_holder_frees_the_lock(tmp_path):
    path = tmp_path / "work.lock"
    proc = _holder(path, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    said = []
    with locks.held(path, "testing", said.append) as locked:
        assert locked
    assert said == []  # free at once: the kernel released the dead process's lock


def test_an_uncontended_lock_says_nothing_and_leaves_nothing(tmp_path):
    said = []
    with locks.held(tmp_path / "sub" / "x.lock", "testing", said.append):
        assert (tmp_path / "sub" / "x.lock").exists()
    assert said == [] and os.listdir(tmp_path / "sub") == []
