"""Interrupted runs (by SIGUSR1, by kill -9, during a save, with a damaged checkpoint) resume to
exactly the weights and per-step losses of an uninterrupted run, on 1 and on 2 processes."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import BIN, REPO, assert_ok, free_port, make_pre_split
from trainer.train import checkpoint

pytestmark = pytest.mark.slow(
    reason="each test trains, stops and resumes runs of 1 or 2 processes to compare weights"
)

RUNNER = Path(__file__).with_name("resume_runner.py")
TRAIN_ROWS = 48  # 3 classes x 16: whole batches of 8 on 1 and on 2 processes, nothing dropped
ARGS = (
    "--config",
    "cpu-smoke",
    "train.batch_size=8",
    "train.epochs=3",
    "train.log_every=1",
    "train.mixup_alpha=0.2",  # draws from the global RNG every step: checks its restore
    "train.ema_decay=0.9",
    "data.auto_augment=trivial",
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=2",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "images"
    return make_pre_split(root, ["a", "b", "c"], {"train": 16, "val": 4, "test": 2})


def command(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, str(RUNNER), "train"]
    return [
        str(BIN / "accelerate"),
        "launch",
        "--config_file",
        str(REPO / "accelerate_configs" / "cpu.yaml"),
        "--main_process_port",
        str(free_port()),
        str(RUNNER),
        "train",
    ]


def start(data: Path, run: Path, processes: int, *extra: str, env: dict | None = None, args=ARGS):
    cmd = [*command(processes), *args, f"data.root={data}", f"output_dir={run}", *extra]
    full_env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "ACCELERATE_USE_CPU": "true",
        "PYTHONPATH": str(REPO),
        **(env or {}),
    }
    log = open(run.with_suffix(".log"), "a")
    return subprocess.Popen(
        cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def finish(proc: subprocess.Popen, run: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    proc.wait(timeout=timeout)
    out = run.with_suffix(".log").read_text()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, out)


def train(data: Path, run: Path, processes: int, *extra: str, env: dict | None = None, args=ARGS):
    return finish(start(data, run, processes, *extra, env=env, args=args), run)


def wait_until(proc: subprocess.Popen, condition, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"run ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def logged_steps(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if '"train"' in line]
    return max(steps, default=0)


def descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *descendants(int(child))]
    return found


def kill_9_everything(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process below it (torch elastic starts the ranks in
    sessions of their own, so killing the process group alone would leave them running)."""
    doomed = [proc.pid, *descendants(proc.pid)]
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def stop_with_usr1(proc: subprocess.Popen, run: Path, step: int) -> None:
    """SIGUSR1 to a 1-process run once it logged `step`; it must save and exit 75."""
    wait_until(proc, lambda: logged_steps(run) >= step, f"step {step}")
    os.kill(proc.pid, signal.SIGUSR1)
    assert finish(proc, run).returncode == 75


def fake_scontrol(tmp_path: Path) -> tuple[str, Path]:
    """A PATH whose `scontrol` only records its arguments, and the file it records them in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    return f"{bin_dir}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}", calls


def rank_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """The training processes `accelerate launch` started, by RANK."""
    pids = {}
    for task in Path(f"/proc/{launcher.pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            rank = next((e[5:] for e in env if e.startswith(b"RANK=")), None)
            if rank is not None:
                pids[int(rank)] = int(child)
    return pids


def train_losses(run: Path) -> list[tuple[int, float]]:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(e["step"], e["loss"]) for e in events if e["event"] == "train"]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(
        run / "checkpoints" / sorted(os.listdir(run / "checkpoints"))[-1] / "model.safetensors"
    )


def assert_same_run(run: Path, reference: Path) -> None:
    assert train_losses(run) == train_losses(reference)
    for weights in (final_weights, lambda r: load_file(r / "model" / "model.safetensors")):
        got, want = weights(run), weights(reference)
        assert got.keys() == want.keys()
        different = [k for k in want if not torch.equal(got[k], want[k])]
        assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory) -> dict[int, Path]:
    """Uninterrupted runs on 1 and 2 processes."""
    runs = {}
    for processes in (1, 2):
        run = tmp_path_factory.mktemp("reference") / f"p{processes}"
        assert_ok(train(data, run, processes))
        runs[processes] = run
    return runs


@pytest.mark.parametrize("processes", [1, 2])
def test_signal_mid_epoch_then_resume_equals_uninterrupted(data, reference, tmp_path, processes):
    run = tmp_path / "run"
    samples = tmp_path / "samples.jsonl"
    proc = start(data, run, processes, env={"SAMPLE_LOG": str(samples)})
    wait_until(proc, lambda: logged_steps(run) >= 4, "step 4")
    if processes == 1:
        os.kill(proc.pid, signal.SIGUSR1)
    else:
        os.kill(rank_pids(proc)[1], signal.SIGUSR1)  # one rank signalled: all stop together
    stopped = finish(proc, run)
    assert stopped.returncode != 0 and "stopped by" in stopped.stdout, stopped.stdout[-3000:]
    if processes == 1:
        assert stopped.returncode == 75
    else:
        # The first rank to exit 75 makes torch's launcher SIGTERM the other, which may still be
        # tearing down after the (collective, complete) save.
        assert "exitcode  : 75" in stopped.stdout, stopped.stdout[-3000:]
    state = json.loads(
        (sorted((run / "checkpoints").glob("step-*"))[-1] / "trainer_state.json").read_text()
    )
    resumed = train(data, run, processes, env={"SAMPLE_LOG": str(samples)})
    assert_ok(resumed)
    assert f"resuming from {run / 'checkpoints'}" in resumed.stdout
    assert_same_run(run, reference[processes])
    # Every epoch trained on each training image exactly once, across the interruption.
    seen = collections.defaultdict(list)
    for line in samples.read_text().splitlines():
        record = json.loads(line)
        seen[record["epoch"]].append(record["row"])
    assert sorted(seen) == [0, 1, 2]
    for epoch, rows in seen.items():
        assert sorted(rows) == list(range(TRAIN_ROWS)), f"epoch {epoch}"
    assert state["next"]["batch"] > 0 or processes == 2  # 1 process: stopped mid-epoch


@pytest.mark.parametrize("processes", [1, 2])
def test_kill_9_then_resume_equals_uninterrupted(data, reference, tmp_path, processes):
    run = tmp_path / "run"
    proc = start(data, run, processes)

    def mid_epoch_checkpoint() -> bool:
        for folder in (run / "checkpoints").glob("step-*[0-9]"):
            state = folder / "trainer_state.json"
            if (folder / "COMPLETE").exists() and json.loads(state.read_text())["next"]["batch"]:
                return True
        return False

    wait_until(proc, mid_epoch_checkpoint, "a mid-epoch checkpoint")
    kill_9_everything(proc)  # launcher, ranks and loader workers, no warning
    assert not (run / "summary.json").exists()
    assert_ok(train(data, run, processes))
    assert_same_run(run, reference[processes])


def test_negative_control_resuming_at_the_wrong_batch_is_caught(data, reference, tmp_path):
    run = tmp_path / "run"
    proc = start(data, run, 1)
    stop_with_usr1(proc, run, 4)
    assert_ok(train(data, run, 1, env={"FORGET_POSITION": "1"}))
    with pytest.raises(AssertionError):
        assert_same_run(run, reference[1])


def test_crash_while_saving_resumes_from_the_previous_checkpoint(data, reference, tmp_path):
    run = tmp_path / "run"
    crashed = train(data, run, 1, env={"CRASH_SAVING_STEP": "6"})
    assert crashed.returncode == -signal.SIGKILL
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert left == ["step-00000002", "step-00000004", "step-00000006.tmp"]
    resumed = train(data, run, 1)
    assert_ok(resumed)
    assert "resuming from" in resumed.stdout and "step-00000004" in resumed.stdout
    assert_same_run(run, reference[1])


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
    assert_same_run(run, reference[1])


def test_a_dead_rank_ends_the_job_and_is_named(data, tmp_path):
    run = tmp_path / "run"
    proc = start(data, run, 2, "train.collective_timeout_s=60", "train.epochs=20")
    wait_until(proc, lambda: logged_steps(run) >= 2, "step 2")
    os.kill(rank_pids(proc)[1], signal.SIGKILL)
    began = time.monotonic()
    out = finish(proc, run, timeout=120)
    assert out.returncode != 0
    assert time.monotonic() - began < 90
    assert "rank: 1" in out.stdout and "Signal 9" in out.stdout, out.stdout[-3000:]


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
    assert_same_run(run, reference[1])


def test_a_stuck_rank_fails_the_job_after_the_collective_timeout(data, tmp_path):
    run = tmp_path / "run"
    proc = start(data, run, 2, "train.collective_timeout_s=5", "train.epochs=50")
    wait_until(proc, lambda: logged_steps(run) >= 2, "step 2")
    os.kill(rank_pids(proc)[1], signal.SIGSTOP)  # alive but never answers
    out = finish(proc, run, timeout=150)
    assert out.returncode != 0
    assert "error on rank 0 of 2" in out.stdout
    assert "train.collective_timeout_s=5" in out.stdout, out.stdout[-3000:]


TWO_PHASES = """
model: {name: torchvision/resnet18, pretrained: false}
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


def test_sigterm_saves_and_stops_but_does_not_requeue(data, tmp_path):
    path, calls = fake_scontrol(tmp_path)
    env = {"PATH": path, "SLURM_JOB_ID": "9"}
    run = tmp_path / "run"
    proc = start(data, run, 2, env=env)
    wait_until(proc, lambda: logged_steps(run) >= 2, "step 2")
    os.kill(rank_pids(proc)[1], signal.SIGTERM)  # e.g. scancel: a cancel must stay a cancel
    stopped = finish(proc, run)
    assert "stopped by SIGTERM" in stopped.stdout, stopped.stdout[-3000:]
    assert not calls.exists()
    assert checkpoint.newest_valid(run / "checkpoints") is not None
