"""Interrupted 1-process runs (by SIGUSR1, by kill -9, during a save, with a damaged checkpoint,
in a run's second phase) resume to exactly the weights and per-step losses of an uninterrupted
run; test_resume_ranks.py does the same on 2 processes."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.conftest import assert_ok
from tests.integration.resuming import (
    assert_same_run,
    fake_scontrol,
    finish,
    kill_9_then_resume,
    logged_steps,
    make_data,
    reference_run,
    signal_mid_epoch_then_resume,
    start,
    stop_with_usr1,
    train,
    wait_until,
)
from trainer.train import checkpoint

pytestmark = pytest.mark.slow(
    reason="each test trains, stops and resumes a run to compare its weights with a reference"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted 1-process run."""
    return reference_run(data, tmp_path_factory, 1)


def test_signal_mid_epoch_then_resume_equals_uninterrupted(data, reference, tmp_path):
    signal_mid_epoch_then_resume(data, reference, tmp_path, processes=1)


def test_kill_9_then_resume_equals_uninterrupted(data, reference, tmp_path):
    kill_9_then_resume(data, reference, tmp_path, processes=1)


def test_negative_control_resuming_at_the_wrong_batch_is_caught(data, reference, tmp_path):
    run = tmp_path / "run"
    proc = start(data, run, 1)
    stop_with_usr1(proc, run, 4)
    assert_ok(train(data, run, 1, env={"FORGET_POSITION": "1"}))
    with pytest.raises(AssertionError):
        assert_same_run(run, reference)


def test_crash_while_saving_resumes_from_the_previous_checkpoint(data, reference, tmp_path):
    run = tmp_path / "run"
    crashed = train(data, run, 1, env={"CRASH_SAVING_STEP": "6"})
    assert crashed.returncode == -signal.SIGKILL
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert left == ["step-00000002", "step-00000004", "step-00000006.tmp"]
    resumed = train(data, run, 1)
    assert_ok(resumed)
    assert "resuming from" in resumed.stdout and "step-00000004" in resumed.stdout
    assert_same_run(run, reference)


def test_a_truncated_checkpoint_is_skipped_with_a_warning(data, reference, tmp_path):
    run = tmp_path / "run"
    proc = start(data, run, 1)
    stop_with_usr1(proc, run, 9)
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    weights = newest / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    resumed = train(data, run, 1)
    assert_ok(resumed)
    assert f"skipping damaged checkpoint: {weights}" in resumed.stdout
    assert_same_run(run, reference)


def test_repeated_sigusr1_saves_once_requeues_the_array_task_and_resumes_exactly(
    data, reference, tmp_path
):
    path, calls = fake_scontrol(tmp_path)
    slurm = {
        "PATH": path,
        "SLURM_JOB_ID": "4242",
        "SLURM_ARRAY_JOB_ID": "4240",
        "SLURM_ARRAY_TASK_ID": "2",
    }
    run = tmp_path / "run"
    proc = start(data, run, 1, env=slurm)
    wait_until(proc, lambda: logged_steps(run) >= 4, "step 4")
    for _ in range(20):  # the first sets the flag; the rest land during the save
        if proc.poll() is not None:
            break
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(0.02)
    stopped = finish(proc, run)
    assert stopped.returncode == 75, stopped.stdout[-3000:]
    assert "stopped by SIGUSR1" in stopped.stdout
    assert calls.read_text().split() == ["requeue", "4240_2"]
    for folder in (run / "checkpoints").glob("step-*"):
        assert not folder.name.endswith(".tmp")
        checkpoint.verify(folder)
    assert_ok(train(data, run, 1))
    assert_same_run(run, reference)


def test_a_resumed_run_continues_the_same_wandb_run(data, tmp_path):
    run = tmp_path / "run"
    wandb = ("tracking.wandb.mode=offline", "train.epochs=2")
    env = {"WANDB_DIR": str(tmp_path / "wandb-home"), "WANDB_CACHE_DIR": str(tmp_path / "wc")}
    proc = start(data, run, 1, *wandb, env=env)
    stop_with_usr1(proc, run, 3)
    run_id = json.loads((run / "wandb_run.json").read_text())["id"]
    resumed = train(data, run, 1, *wandb, env=env)
    assert_ok(resumed)
    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(f.name.endswith(run_id) for f in folders)
    assert json.loads((run / "wandb_run.json").read_text())["id"] == run_id
    assert f"wandb sync {folders[0]} {folders[1]}" in resumed.stdout


TWO_PHASES = """
model: {name: timm/test_resnet, pretrained: false}
data: {image_size: 32, num_workers: 1}
train:
  batch_size: 8
  log_every: 1
  ema_decay: 0.9
  phases:
    - {name: head, epochs: 2, freeze: backbone, optim: {optimizer: adam, lr: 0.001}}
    - {name: finetune, epochs: 2, optim: {optimizer: sgd, lr: 0.01}}
checkpoint: {every_steps: 2}
"""


def test_a_two_phase_run_stopped_in_its_second_phase_resumes_exactly(data, tmp_path):
    recipe = tmp_path / "two-phase.yaml"
    recipe.write_text(TWO_PHASES)
    args = ("--config", str(recipe))
    assert_ok(train(data, tmp_path / "reference", 1, args=args))
    run = tmp_path / "run"
    proc = start(data, run, 1, args=args)
    stop_with_usr1(proc, run, 15)  # 12 steps in phase 1
    resumed = train(data, run, 1, args=args)
    assert_ok(resumed)
    continued = resumed.stdout.split("resuming from")[-1]  # the log holds both attempts
    assert "phase 2/2 'finetune'" in continued and "phase 1/2" not in continued
    assert_same_run(run, tmp_path / "reference")
