"""What test_resume.py (1 process) and test_resume_ranks.py (2 processes) share: the run they
interrupt, how they start, signal, kill and finish it, and the check that a resumed run is the
uninterrupted one (the same per-step losses, bit-identical final and kept weights)."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.conftest import BIN, REPO, TINY_MODEL, assert_ok, free_port, make_pre_split

RUNNER = Path(__file__).with_name("resume_runner.py")
TRAIN_ROWS = 48  # 3 classes x 16: whole batches of 8 on 1 and on 2 processes, nothing dropped
ARGS = (
    "--config",
    "cpu-smoke",
    f"model.name={TINY_MODEL}",  # 0.4M parameters: a checkpoint every 2 steps costs little
    "train.batch_size=8",
    "train.epochs=3",
    "train.log_every=1",
    "train.mixup_alpha=0.2",  # draws from the global RNG every step: checks its restore
    "train.ema_decay=0.9",
    "data.auto_augment=trivial",
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=2",
)


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


def make_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "images"
    return make_pre_split(root, ["a", "b", "c"], {"train": 16, "val": 4, "test": 2})


def reference_run(data: Path, tmp_path_factory, processes: int) -> Path:
    """The uninterrupted run on `processes` processes."""
    run = tmp_path_factory.mktemp("reference") / f"p{processes}"
    assert_ok(train(data, run, processes))
    return run


def signal_mid_epoch_then_resume(data: Path, reference: Path, tmp_path: Path, processes: int):
    """SIGUSR1 at step 4 (on 2 processes, to rank 1 only), then a resume: the same run as the
    uninterrupted one, each training image seen once per epoch across the interruption."""
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
    assert_same_run(run, reference)
    # Every epoch trained on each training image exactly once, across the interruption.
    seen = collections.defaultdict(list)
    for line in samples.read_text().splitlines():
        record = json.loads(line)
        seen[record["epoch"]].append(record["row"])
    assert sorted(seen) == [0, 1, 2]
    for epoch, rows in seen.items():
        assert sorted(rows) == list(range(TRAIN_ROWS)), f"epoch {epoch}"
    assert state["next"]["batch"] > 0 or processes == 2  # 1 process: stopped mid-epoch


def kill_9_then_resume(data: Path, reference: Path, tmp_path: Path, processes: int):
    """kill -9 of everything once a mid-epoch checkpoint is complete, then a resume: the same run
    as the uninterrupted one."""
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
    assert_same_run(run, reference)
