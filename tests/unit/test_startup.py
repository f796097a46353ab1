"""The time to the first training step is booked part by part, once; the heavy imports do not
run the garbage collector."""

from __future__ import annotations

import gc
import subprocess
import sys
import time

from trainer.cli.args import collector_paused
from trainer.train.startup import Startup, seconds_since_process_start


class _Recorder:
    def __init__(self):
        self.printed = []

    def print(self, text):
        self.printed.append(text)


def test_parts_add_up_to_the_total_and_inner_work_is_booked_apart():
    startup = Startup()
    time.sleep(0.02)
    startup.lap("index", check=0.01)  # 0.02 s elapsed, of which the scan measured 0.01 checking
    startup.lap("model build")
    out = _Recorder()
    startup.step_done(out)
    parts = startup.summary()
    assert list(parts)[:4] == ["seconds", "launch", "index", "check"]
    assert parts["check"] == 0.01 and parts["index"] >= 0.009
    assert abs(sum(v for k, v in parts.items() if k != "seconds") - parts["seconds"]) < 0.01
    assert out.printed == [startup.line()] and out.printed[0].startswith("time to first step ")


def test_only_the_first_step_ends_the_startup():
    startup, out = Startup(), _Recorder()
    startup.step_done(out)
    total = startup.total
    startup.lap("phase start")  # a later phase: not part of the startup
    startup.step_done(out)
    assert startup.total == total and "phase start" not in startup.parts
    assert len(out.printed) == 1


def test_a_run_without_a_step_has_no_time_to_first_step():
    assert Startup().summary() is None


def test_the_process_age_is_known_here():
    assert 0.0 < seconds_since_process_start() < 24 * 3600


def test_a_fresh_process_freezes_what_it_imports_and_a_used_one_keeps_its_collector():
    code = (
        "import gc\nfrom trainer.cli.args import collector_paused\n"
        "with collector_paused():\n    assert not gc.isenabled()\n    import email.mime.text\n"
        "print(gc.get_freeze_count() > 0, gc.isenabled())"
    )
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert fresh.stdout.split() == ["True", "True"], fresh.stderr
    import torch  # noqa: F401  (as in a test, or a sweep running many runs in one process)

    frozen = gc.get_freeze_count()
    with collector_paused():
        assert gc.isenabled()
        import xml.dom.minidom  # noqa: F401
    assert gc.get_freeze_count() == frozen  # its garbage stays collectable
