"""SIGUSR1 mid-epoch, then resume, on one process of the check device: the per-step losses and the
final weights equal an uninterrupted run's. On the CPU exactly (as tests/integration/
test_resume.py); on CUDA within a tolerance, the determinism settings recorded (tests/gpu/
deterministic.py: a few CUDA kernels have no deterministic version, so two uninterrupted runs
can differ in the last bits too): losses within 1e-4 relative, weights within max |difference|
1e-4 (fp32, 12 steps). Whether it was exact is recorded either way. The model is timm's tiny
test_resnet (convolutions, BatchNorm, the same kernels as a ResNet-18): the ~20 checkpoints of
three ResNet-18 runs took minutes on 2 CPU cores; the steps are slowed (STEP_DELAY_S) so that the
signal lands mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, assert_ok, make_pre_split
from tests.gpu.checkdevice import child_env, max_difference, on_check_device, on_cpu, record
from tests.gpu.deterministic import SETTINGS
from tests.integration.resuming import (
    ARGS,
    final_weights,
    finish,
    logged_steps,
    train_losses,
    wait_until,
)

pytestmark = on_check_device

DETERMINISTIC = Path(__file__).with_name("deterministic.py")


def start(data: Path, run: Path) -> subprocess.Popen:
    """One training process (no launcher: SIGUSR1 goes straight to it), logging to RUN.log."""
    cmd = [
        sys.executable,
        str(DETERMINISTIC),
        "train",
        *ARGS,
        f"data.root={data}",
        f"output_dir={run}",
    ]
    log = open(run.with_suffix(".log"), "a")
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=child_env({"STEP_DELAY_S": "0.15"}),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_sigusr1_then_resume_on_one_device_equals_uninterrupted(tmp_path):
    data = make_pre_split(tmp_path / "images", ["a", "b", "c"], {"train": 16, "val": 4, "test": 2})
    reference = tmp_path / "reference"
    assert_ok(finish(start(data, reference), reference))
    run = tmp_path / "run"
    proc = start(data, run)
    wait_until(proc, lambda: logged_steps(run) >= 4, "step 4")
    os.kill(proc.pid, signal.SIGUSR1)
    stopped = finish(proc, run)
    assert stopped.returncode == 75 and "stopped by" in stopped.stdout, stopped.stdout[-3000:]
    resumed = finish(start(data, run), run)
    assert_ok(resumed)
    assert f"resuming from {run / 'checkpoints'}" in resumed.stdout
    got, want = train_losses(run), train_losses(reference)
    assert [s for s, _ in got] == [s for s, _ in want]
    loss_diff = max(abs(a - b) / max(abs(b), 1e-12) for (_, a), (_, b) in zip(got, want))
    weight_diff = max_difference(final_weights(run), final_weights(reference))
    exact = loss_diff == 0 and weight_diff == 0
    record(
        "resume",
        exact=exact,
        max_relative_loss_difference=loss_diff,
        max_abs_weight_difference=weight_diff,
        determinism=SETTINGS,
    )
    if on_cpu():
        assert exact, (loss_diff, weight_diff)
    assert loss_diff <= 1e-4 and weight_diff <= 1e-4, (loss_diff, weight_diff)
