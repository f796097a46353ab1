"""`trainer train` never deletes or changes what is not its own: inputs are checked before
output_dir is touched, a folder that is not a run is refused, one run per folder (a lock), an
overwritten run is kept aside until the new one has a checkpoint, a resume needs the same data."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, accelerate_launch, assert_ok, make_folder, train_smoke
from trainer.train import lock, rundir

FAST = ("train.epochs=1", "checkpoint.keep_last=1")


def tree(folder: Path) -> dict[str, str]:
    """relative path -> sha256 (files) or 'dir': the whole tree, to compare before and after."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        found[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def assert_refused(proc: subprocess.CompletedProcess, *names: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    for name in names:
        assert name in proc.stderr, proc.stderr


def copy_run(trained_run, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the shared finished run (whose folder no test may change) and its images."""
    root, run = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    # One checkpoint is enough to stand for an unfinished run; keeps the copy small.
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    shutil.copytree(newest, copy / "checkpoints" / newest.name)
    return root, copy


@pytest.mark.parametrize(
    "mistake, named",
    [
        ("data.root={root}-typo", "data.root"),
        ("model.name=torchvision/resnet_eighteen", "resnet_eighteen"),
    ],
)
def test_overwrite_with_a_mistake_in_the_inputs_leaves_the_finished_run_untouched(
    trained_run, tmp_path, mistake, named
):
    root, run = copy_run(trained_run, tmp_path)
    before = tree(run)
    proc = train_smoke(root, run, "overwrite=true", mistake.format(root=root))
    assert_refused(proc, named)
    assert tree(run) == before


def test_an_existing_folder_that_is_not_a_run_is_refused_and_left_as_it_was(tmp_path):
    root = make_folder(tmp_path / "images", ["cat", "dog"], 6, size=24)
    project = tmp_path / "project"
    (project / "model").mkdir(parents=True)
    (project / "model" / "weights.bin").write_bytes(b"precious")
    (project / "config.yaml").write_text("mine: true\n")
    (project / "report.md").write_text("# my notes\n")
    before = tree(project)
    for extra in ((), ("overwrite=true",)):
        proc = train_smoke(root, project, *extra)
        assert_refused(proc, "output_dir", str(project), "not a run folder")
        assert tree(project) == before


@pytest.mark.slow(reason="2 gloo processes")
def test_with_two_processes_every_rank_exits_2_and_the_folder_is_left_as_it_was(tmp_path):
    root = make_folder(tmp_path / "images", ["cat", "dog"], 6, size=24)
    project = tmp_path / "project"
    project.mkdir()
    (project / "thesis.tex").write_text("mine")
    args = ("--config", "cpu-smoke", f"data.root={root}", f"output_dir={project}")
    proc = accelerate_launch(str(REPO / "train.py"), *args)
    # The launcher reports the first rank to fail (exit 2); it may stop the other one before
    # that one reports its own 2 (under load it does), so only one report is certain.
    assert proc.stdout.count("exitcode  : 2") + proc.stderr.count("exitcode  : 2") >= 1
    assert proc.stderr.count("trainer train: error: output_dir") == 1, proc.stderr[-3000:]
    assert sorted(p.name for p in project.iterdir()) == ["thesis.tex"]


@pytest.mark.parametrize("where", ["the data folder", "inside data.root"])
def test_output_dir_in_the_data_folder_is_refused(tmp_path, where):
    # Class folders named like run entries: the old code deleted them.
    root = make_folder(tmp_path / "images", ["model", "plots", "cat"], 6, size=24)
    out = root if where == "the data folder" else root / "runs" / "a"
    before = tree(root)
    proc = train_smoke(root, out, "overwrite=true")
    assert_refused(proc, "output_dir", "inside data.root")
    assert tree(root) == before


def write_lock(run: Path, pid: int, host: str | None = None) -> dict:
    holder = {
        "host": host or socket.gethostname(),
        "pid": pid,
        "pid_start": lock._process_start(pid),
        "since": "2026-01-02T03:04:05+0000",
        "token": "test",
    }
    (run / rundir.LOCK).write_text(json.dumps(holder))
    return holder


def test_a_folder_in_use_by_a_live_run_is_refused(trained_run, tmp_path):
    root, run = copy_run(trained_run, tmp_path)
    (run / "summary.json").unlink()  # unfinished: the second run would otherwise resume it
    write_lock(run, os.getpid())  # this test process is alive: a run that holds the folder
    before = tree(run)
    proc = train_smoke(root, run)
    assert_refused(proc, f"is in use by the run of pid {os.getpid()}", socket.gethostname())
    assert "2026-01-02T03:04:05" in proc.stderr and "pick another output_dir" in proc.stderr
    assert tree(run) == before


@pytest.mark.slow(reason="kills a training process and trains again")
def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    root = make_folder(tmp_path / "images", ["cat", "dog"], 6, size=24)
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is free now (reaped)
    write_lock(run, dead.pid)
    proc = train_smoke(root, run, *FAST)
    assert_ok(proc)
    assert f"taking over the lock of {run}: the run of pid {dead.pid}" in proc.stdout
    assert not (run / rundir.LOCK).exists()  # released at the end


@pytest.mark.slow(reason="trains two runs into one folder")
def test_overwrite_replaces_only_what_the_old_run_wrote(trained_run, tmp_path):
    root, run = copy_run(trained_run, tmp_path)
    (run / "notes.txt").write_text("my conclusions\n")
    old_summary = (run / "summary.json").read_bytes()
    proc = train_smoke(root, run, "overwrite=true", *FAST)
    assert_ok(proc)
    assert "kept in" in proc.stdout and rundir.ASIDE in proc.stdout
    assert (run / "notes.txt").read_text() == "my conclusions\n"
    assert (run / "summary.json").read_bytes() != old_summary
    assert json.loads((run / "summary.json").read_text())["epochs"] == 1
    assert not (run / rundir.ASIDE).exists() and not (run / rundir.DROP).exists()
    assert not (run / rundir.LOCK).exists()


def test_resuming_with_changed_data_is_refused_and_says_what_changed(trained_run, tmp_path):
    images, run = copy_run(trained_run, tmp_path)
    root = shutil.copytree(images, tmp_path / "images")
    (run / "summary.json").unlink()  # an unfinished run with a checkpoint
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["root"] = str(root)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    rows = (run / "splits.csv").read_text().splitlines()[1:]
    train_file = next(r.split(",")[2] for r in rows if r.startswith("train,"))
    shutil.copy(root / train_file, root / "cat" / "new_one.png")
    (root / next(r.split(",")[2] for r in rows if r.startswith("val,"))).unlink()
    before = tree(run)
    same = ("model.name=torchvision/resnet18", "train.epochs=2", "train.batch_size=8")  # as run
    proc = train_smoke(root, run, *same, "train.log_every=1")
    assert_refused(proc, "data.root", "changed since this run started", "overwrite=true")
    assert "added to" in proc.stderr and "removed from" in proc.stderr, proc.stderr
    assert tree(run) == before


def test_rerunning_a_trained_run_whose_checkpoints_were_deleted_keeps_its_model(
    trained_run, tmp_path
):
    root, finished = trained_run
    run = tmp_path / "run"
    # Unfinished, and its checkpoints/ deleted to free disk space: only model/ is left of it.
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns("checkpoints", "summary.json"))
    before = tree(run)
    proc = train_smoke(root, run, "train.epochs=2", "train.batch_size=8", "train.log_every=1")
    assert_refused(proc, "output_dir", str(run), "model/", "no checkpoint", "overwrite=true")
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert tree(run) == before
