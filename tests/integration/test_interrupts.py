"""Ctrl-C, as a terminal sends it (SIGINT to the whole process group): in training it saves a
checkpoint and the same command continues; twice before the save, it quits at once with 130 and
nothing incomplete; outside training (here the image check) it ends with 130, no traceback and
no temp file.

No sleeps: each run waits at a gate (a file the test creates) at the point the signal must
reach it, so the run can neither finish before the signal nor be signalled too early.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import (
    BIN,
    REPO,
    TINY_MODEL,
    assert_ok,
    make_folder,
    make_pre_split,
    train_smoke,
)

# `trainer ARGS` whose first stop check (after the first optimizer update) announces itself in
# $WAITING and waits until $GATE exists: the stop handler is installed by then.
TRAIN_RUNNER = """
import os, sys, time
from pathlib import Path
from trainer.train.preemption import StopFlag
from trainer.cli import main
original = StopFlag.agreed
def gated(self, accelerator):
    if not os.path.exists(os.environ["GATE"]):
        Path(os.environ["WAITING"]).touch()
        while not os.path.exists(os.environ["GATE"]):
            time.sleep(0.01)
    return original(self, accelerator)
StopFlag.agreed = gated
sys.exit(main())
"""

# `trainer ARGS` whose image checks wait until $GATE exists (in the pool's worker processes).
SCAN_RUNNER = """
import os, sys, time
from trainer.data import badfiles
from trainer.cli import main
original = badfiles.check_file
def gated(path, max_pixels=None):
    while not os.path.exists(os.environ["GATE"]):
        time.sleep(0.01)
    return original(path, max_pixels)
badfiles.check_file = gated
sys.exit(main())
"""

TRAIN_ARGS = (
    "--config",
    "cpu-smoke",
    f"model.name={TINY_MODEL}",
    "train.batch_size=8",
    "train.epochs=1",
)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interrupts") / "images"
    return make_pre_split(root, ["a", "b"], {"train": 12, "val": 4})


def start(runner: str, tmp_path: Path, *args: str) -> subprocess.Popen:
    """The runner in a session of its own, like a terminal's foreground job."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "GATE": str(tmp_path / "gate"),
        "WAITING": str(tmp_path / "waiting"),
        "TRAINER_CACHE_DIR": str(tmp_path / "cache"),
    }
    log = open(tmp_path / "log.txt", "w")
    return subprocess.Popen(
        [sys.executable, "-c", runner, *args],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # A terminal's job takes Ctrl-C; the test may run where SIGINT is ignored (a job started
        # with `&` by a script inherits SIG_IGN, and so would this child).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def ctrl_c(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)  # the whole process group, as a terminal does


def ended(proc: subprocess.Popen, tmp_path: Path) -> tuple[int, str]:
    proc.wait(timeout=300)
    return proc.returncode, (tmp_path / "log.txt").read_text()


def test_ctrl_c_in_training_saves_a_checkpoint_and_the_same_command_continues(images, tmp_path):
    run = tmp_path / "run"
    args = (*TRAIN_ARGS, f"data.root={images}", f"output_dir={run}")
    proc = start(TRAIN_RUNNER, tmp_path, "train", *args)
    wait_for(proc, (tmp_path / "waiting").exists, "the first step")
    ctrl_c(proc)
    log = tmp_path / "log.txt"
    wait_for(proc, lambda: "Ctrl-C: saving a checkpoint" in log.read_text(), "the Ctrl-C line")
    (tmp_path / "gate").touch()
    code, out = ended(proc, tmp_path)
    assert code == 75, out[-3000:]
    assert "stopped by SIGINT at step 1: checkpoint" in out
    assert "the same command continues the run" in out
    assert "Traceback" not in out
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000001"]
    assert not (run / "summary.json").exists()
    again = train_smoke(images, run, *TRAIN_ARGS[2:])  # the same command, without the gate
    assert_ok(again)
    assert "resuming from" in again.stdout + again.stderr
    resumes = [json.loads(x) for x in (run / "resumes.jsonl").read_text().splitlines()]
    assert len(resumes) == 1 and resumes[0]["step"] == 1
    assert (run / "summary.json").is_file()


def test_a_second_ctrl_c_before_the_save_quits_with_130_and_no_checkpoint(images, tmp_path):
    run = tmp_path / "run"
    args = (*TRAIN_ARGS, f"data.root={images}", f"output_dir={run}")
    proc = start(TRAIN_RUNNER, tmp_path, "train", *args)
    wait_for(proc, (tmp_path / "waiting").exists, "the first step")
    ctrl_c(proc)
    log = tmp_path / "log.txt"
    wait_for(proc, lambda: "Ctrl-C: saving a checkpoint" in log.read_text(), "the Ctrl-C line")
    ctrl_c(proc)  # still before the stop check: out now
    code, out = ended(proc, tmp_path)
    assert code == 130, out[-3000:]
    assert "Traceback" not in out
    checkpoints = run / "checkpoints"
    assert not checkpoints.exists() or not list(checkpoints.glob("*/COMPLETE"))
    assert not (run / "summary.json").exists()


def test_ctrl_c_while_checking_images_ends_with_130_no_traceback_no_temp_file(tmp_path):
    root = make_folder(tmp_path / "images", ["a", "b"], 70)  # 140 files: checked in a pool
    proc = start(SCAN_RUNNER, tmp_path, "scan", str(root), "--workers", "2")

    def pool_started() -> bool:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        return len(children) >= 2

    wait_for(proc, pool_started, "the checking processes")
    ctrl_c(proc)
    (tmp_path / "gate").touch()  # let the workers finish the files they hold
    code, out = ended(proc, tmp_path)
    assert code == 130, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    assert "trainer scan: interrupted" in out
    cache = tmp_path / "cache" / "scan"
    assert not cache.exists() or not [p for p in cache.iterdir() if p.suffix == ".tmp"]
