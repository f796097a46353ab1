"""The run folder's manifest, lock and kept-aside old run (trainer.rundir), without training."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainer.config import ConfigError, load_config
from trainer.train import lock, placement, rundir
from trainer.train.resume import _choose, _describe_changes


def tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): "dir"
        if p.is_dir()
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


def fake_run(folder: Path, manifest: bool = True, tag: str = "old") -> Path:
    """A finished run's entries (small stand-ins) as this program writes them."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "model.safetensors").write_text(f"{tag} weights")
    (folder / "checkpoints" / "step-00000004").mkdir(parents=True)
    (folder / "checkpoints" / "step-00000004" / "COMPLETE").write_text("{}")
    (folder / "config.yaml").write_text(f"data: {{root: x}}\nmodel: {{}}\ntrain: {{}}\n# {tag}\n")
    (folder / "env.json").write_text("{}")
    (folder / "summary.json").write_text(json.dumps({"run": tag}))
    if manifest:
        rundir.write_manifest(folder, [])
    return folder


def accelerator(lines: list[str]):
    return SimpleNamespace(is_main_process=True, num_processes=1, print=lines.append)


# --------------------------------------------------------------------------- placement


def test_output_dir_inside_or_equal_to_data_root_is_refused(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for out in (root, root / "runs" / "a"):
        with pytest.raises(ConfigError, match="output_dir: .* is inside data.root"):
            placement.check_placement(str(out), str(root))
    placement.check_placement(str(tmp_path / "runs" / "a"), str(root))


def test_output_dir_reached_through_a_symlink_into_data_root_is_refused(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (tmp_path / "link").symlink_to(root)
    with pytest.raises(ConfigError, match="inside data.root"):
        placement.check_placement(str(tmp_path / "link" / "run"), str(root))


def test_data_root_inside_output_dir_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="data.root: .* is inside output_dir"):
        placement.check_placement(str(tmp_path), str(tmp_path / "run" / "images"))


def test_a_pixel_cache_inside_output_dir_or_data_root_is_refused(tmp_path):
    # Found by a tester: data.cache_dir=output_dir built a cache there, then refused its own run
    out, root = tmp_path / "runs" / "a", tmp_path / "images"
    for cache, inside in (
        (out, "output_dir"),
        (out / "c", "output_dir"),
        (root / "c", "data.root"),
    ):
        with pytest.raises(ConfigError, match=f"data.cache_dir: .* is inside {inside} "):
            placement.check_cache_placement(cache, "data.cache_dir", str(out), str(root))
    for fine in (tmp_path / "cache", tmp_path, root / ".cache" / "pixels"):  # hidden: never read
        placement.check_cache_placement(fine, "data.cache_dir", str(out), str(root))


# --------------------------------------------------------------------------- what a folder is


def test_a_missing_or_empty_folder_or_one_with_only_a_stale_lock_is_new(tmp_path):
    assert rundir.inspect(tmp_path / "missing").kind == "new"
    (tmp_path / rundir.LOCK).write_text("{}")
    assert rundir.inspect(tmp_path).kind == "new"


def test_a_folder_of_other_files_is_foreign_and_refused(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "config.yaml").write_text("mine: 1\n")
    contents = rundir.inspect(tmp_path)
    assert contents.kind == "foreign"
    with pytest.raises(ConfigError, match="not a run folder .*'config.yaml', 'model'"):
        rundir.refuse_unless_run(tmp_path, contents)


def test_an_older_versions_run_counts_only_entries_of_the_right_kind(tmp_path):
    fake_run(tmp_path, manifest=False)
    (tmp_path / "plots").write_text("a file where the run writes a folder: not the run's")
    contents = rundir.inspect(tmp_path)
    assert contents.kind == "old-run"
    assert "model" in contents.recorded and "plots" not in contents.recorded
    assert contents.strangers == ["plots"]
    with pytest.raises(ConfigError, match="'plots', which this program did not write"):
        rundir.refuse_unless_run(tmp_path, contents)


@pytest.mark.parametrize("entries", ['["../x"]', '[".."]', '["trainer.lock"]', '"model"', "[1]"])
def test_a_damaged_manifest_is_refused_not_guessed(tmp_path, entries):
    (tmp_path / rundir.MANIFEST).write_text(f'{{"entries": {entries}}}')
    with pytest.raises(ConfigError, match="cannot be read"):
        rundir.inspect(tmp_path)


# --------------------------------------------------------------------------- replacing a run


def test_a_replacement_that_fails_puts_the_old_run_back_exactly(tmp_path):
    run = fake_run(tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    before = tree(run)
    rundir.start_fresh(run, say=print)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt", rundir.ASIDE, rundir.MANIFEST]
    for name in ("config.yaml", "metrics.jsonl"):  # the new run starts writing
        (run / name).write_text("new")
    done, note = rundir.undo_replacement(run)
    assert done and "back in place" in note
    assert tree(run) == before


def test_a_replacement_that_succeeds_deletes_only_the_old_runs_entries(tmp_path):
    run = fake_run(tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    rundir.start_fresh(run, say=print)
    (run / "summary.json").write_text("new")
    rundir.finish_replacement(run)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt", "summary.json", rundir.MANIFEST]


def test_an_older_versions_run_is_replaced_like_any_run(tmp_path):
    run = fake_run(tmp_path / "run", manifest=False)
    rundir.start_fresh(run, say=print)
    assert (run / rundir.ASIDE / "model" / "model.safetensors").read_text() == "old weights"
    assert (run / rundir.ASIDE / rundir.MANIFEST).exists()  # adopted, then moved with it


def test_a_start_killed_while_moving_the_old_run_aside_is_undone_next_time(tmp_path):
    run = fake_run(tmp_path / "run")
    before = tree(run)
    (run / rundir.ASIDE).mkdir()
    os.rename(run / "model", run / rundir.ASIDE / "model")  # killed after one move
    rundir.resolve_leftovers(run, say=print)
    assert tree(run) == before


def test_a_replacing_run_killed_before_its_first_checkpoint_is_undone_next_time(tmp_path):
    run = fake_run(tmp_path / "run")
    before = tree(run)
    rundir.start_fresh(run, say=print)
    (run / "metrics.jsonl").write_text("new run's events")  # then kill -9
    notes: list[str] = []
    rundir.resolve_leftovers(run, say=notes.append)
    assert "back in place" in notes[0]
    assert tree(run) == before


def test_an_interrupted_deletion_of_the_old_run_is_finished_next_time(tmp_path):
    run = fake_run(tmp_path / "run")
    rundir.start_fresh(run, say=print)
    os.rename(run / rundir.ASIDE, run / rundir.DROP)  # killed during finish_replacement
    rundir.resolve_leftovers(run, say=print)
    assert not (run / rundir.DROP).exists() and not (run / rundir.ASIDE).exists()


# --------------------------------------------------------------------------- the lock


def lock_of(pid: int, host: str | None = None, **extra) -> dict:
    return {"host": host or socket.gethostname(), "pid": pid, "since": "T0", **extra}


def test_the_lock_names_its_holder_and_refuses_a_second_run(tmp_path):
    mine = lock.take_lock(tmp_path, say=print)
    assert mine["pid"] == os.getpid() and mine["host"] == socket.gethostname()
    with pytest.raises(ConfigError, match=f"in use by the run of pid {os.getpid()} on host"):
        lock.take_lock(tmp_path, say=print)
    lock.release_lock(tmp_path, mine)
    assert not (tmp_path / rundir.LOCK).exists()


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_note(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / rundir.LOCK).write_text(json.dumps(lock_of(dead.pid)))
    notes: list[str] = []
    mine = lock.take_lock(tmp_path, say=notes.append)
    assert f"pid {dead.pid}" in notes[0] and "has ended" in notes[0]
    assert json.loads((tmp_path / rundir.LOCK).read_text())["token"] == mine["token"]


def test_a_lock_from_another_host_is_refused_with_how_to_clear_it(tmp_path):
    (tmp_path / rundir.LOCK).write_text(json.dumps(lock_of(1, host="node-17")))
    with pytest.raises(ConfigError, match="on host node-17 since T0.*delete .*trainer.lock"):
        lock.take_lock(tmp_path, say=print)


def test_a_requeued_slurm_job_takes_over_the_lock_of_its_earlier_start(tmp_path, monkeypatch):
    (tmp_path / rundir.LOCK).write_text(
        json.dumps(lock_of(1, host="node-17", slurm_job="42", slurm_restart=0))
    )
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    notes: list[str] = []
    lock.take_lock(tmp_path, say=notes.append)
    assert "Slurm job 42" in notes[0]


def test_releasing_leaves_another_runs_lock_alone(tmp_path):
    (tmp_path / rundir.LOCK).write_text(json.dumps(lock_of(1, token="theirs")))
    lock.release_lock(tmp_path, {"token": "mine"})
    assert (tmp_path / rundir.LOCK).exists()


def test_a_claim_refused_for_a_foreign_folder_writes_nothing(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    claim = rundir.Claim(str(tmp_path), accelerator([]))
    with pytest.raises(ConfigError, match="not a run folder"):
        claim.acquire()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


def test_a_claim_on_a_new_folder_that_fails_removes_the_folder_again(tmp_path):
    claim = rundir.Claim(str(tmp_path / "a" / "run"), accelerator([]))
    claim.acquire()
    assert (tmp_path / "a" / "run" / rundir.LOCK).exists()
    claim.release(succeeded=False)
    assert not (tmp_path / "a" / "run").exists()


# --------------------------------------------------------------------------- same data on resume


def test_changed_data_is_described_per_split_with_the_first_files():
    saved = {("train", "a/1.png"): "a", ("train", "a/2.png"): "a", ("val", "b/1.png"): "b"}
    now = {("train", "a/1.png"): "a", ("train", "a/3.png"): "a", ("train", "a/4.png"): "a"}
    text = _describe_changes(saved, now)
    assert text.startswith(
        "2 files added to train, 1 file removed from train, 1 file removed from val"
    )
    assert "+ a/3.png" in text and "- b/1.png" in text
    assert _describe_changes(saved, dict(saved)) == ""


def test_a_run_that_fails_after_moving_the_old_run_aside_puts_it_back_on_release(tmp_path):
    run = fake_run(tmp_path / "run")
    before = tree(run)
    lines: list[str] = []
    claim = rundir.Claim(str(run), accelerator(lines))
    claim.acquire()
    rundir.start_fresh(run, say=lines.append)
    (run / "config.yaml").write_text("the new run's")
    claim.release(succeeded=False)  # e.g. an error in the first epoch
    assert tree(run) == before
    assert any("back in place" in line for line in lines)


def test_a_run_that_got_its_first_checkpoint_keeps_it_and_drops_the_old_run(tmp_path):
    run = fake_run(tmp_path / "run")
    claim = rundir.Claim(str(run), accelerator([]))
    claim.acquire()
    rundir.start_fresh(run, say=print)
    (run / "checkpoints").mkdir()
    claim.replaced()
    claim.release(succeeded=False)  # a later failure keeps the new run's checkpoint
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", rundir.MANIFEST]


# --------------------------------------------------------------------------- fresh or resume


def unfinished_run(folder: Path, *, model: bool, epochs: int) -> Path:
    """A run folder without checkpoints: died before its first save, or had them deleted."""
    folder.mkdir(parents=True)
    for name in ("config.yaml", "env.json", "splits.csv"):
        (folder / name).write_text(f"{name}\n")
    events = [{"event": "train", "step": 1, "epoch": 1}]
    events += [{"event": "epoch", "step": 2 * n, "epoch": n} for n in range(1, epochs + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if model:
        (folder / "model").mkdir()
        (folder / "model" / "model.safetensors").write_bytes(b"trained weights")
    rundir.write_manifest(folder, [])
    return folder


@pytest.mark.parametrize("model, epochs", [(False, 0), (True, 1)])
def test_a_run_that_died_before_or_in_its_first_save_starts_fresh(tmp_path, model, epochs):
    run = unfinished_run(tmp_path / "run", model=model, epochs=epochs)
    if model:  # its first save failed (full disk, removed) or was killed: checkpoints/ is there
        (run / "checkpoints" / "step-00000003.tmp").mkdir(parents=True)
    cfg = load_config("cpu-smoke", [f"output_dir={run}"])
    assert _choose(cfg, run, print) is None


@pytest.mark.parametrize(
    "model, epochs, named",
    [
        (True, 2, "a trained model/"),
        (True, 1, "a trained model/"),
        (False, 1, "metrics.jsonl of 1 trained epoch"),
        (True, 3, "metrics.jsonl of 3 trained epochs"),
    ],
)
def test_a_trained_run_without_checkpoints_is_refused_unless_overwrite(
    tmp_path, model, epochs, named
):
    # checkpoints/ deleted to free disk space, or never written (checkpoint.enabled=false), or
    # emptied after more epochs than a first save covers
    run = unfinished_run(tmp_path / "run", model=model, epochs=epochs)
    if epochs == 3:
        (run / "checkpoints").mkdir()
    before = tree(run)
    cfg = load_config("cpu-smoke", [f"output_dir={run}"])
    with pytest.raises(ConfigError, match="no checkpoint to continue from") as refused:
        _choose(cfg, run, print)
    assert named in str(refused.value) and "overwrite=true" in str(refused.value)
    assert tree(run) == before
    never = load_config("cpu-smoke", [f"output_dir={run}", "checkpoint.resume=never"])
    with pytest.raises(ConfigError, match="no checkpoint to continue from"):
        _choose(never, run, print)
    replace = load_config("cpu-smoke", [f"output_dir={run}", "overwrite=true"])
    assert _choose(replace, run, print) is None


def test_a_killed_saves_half_written_checkpoint_is_removed_when_the_next_run_starts(tmp_path):
    import torch

    from trainer.train.resume import prepare_run_dir

    run = unfinished_run(tmp_path / "run", model=False, epochs=0)
    half = run / "checkpoints" / "step-00000003.tmp"  # a save killed by a full disk
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"partial" * 1000)
    lines: list[str] = []
    acc = SimpleNamespace(
        is_main_process=True,
        num_processes=1,
        process_index=0,
        device=torch.device("cpu"),
        print=lines.append,
    )
    cfg = load_config("cpu-smoke", [f"output_dir={run}"])
    assert prepare_run_dir(cfg, acc) == (run, None)
    assert not list(run.rglob("step-00000003.tmp"))


def test_a_lock_that_does_not_say_since_when_is_described_without_none(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / rundir.LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    notes: list[str] = []
    lock.take_lock(tmp_path, say=notes.append)
    assert f"the run of pid {dead.pid} on host {socket.gethostname()} left it" in notes[0]
    assert "None" not in notes[0]
    (tmp_path / rundir.LOCK).write_text("{}")  # names no host: maybe another machine's, kept
    with pytest.raises(ConfigError, match="in use by a run that its lock file does not name"):
        lock.take_lock(tmp_path, say=print)


def test_the_last_line_of_a_run_without_a_val_split_says_so():
    from trainer.train.run import done_line

    without_val = {"best_val_accuracy": None, "best_epoch": None}
    line = done_line(without_val, {"accuracy": 0.5, "samples": 4}, 1.5)
    assert line == (
        "done in 1.5s: no val split (the last epoch's model is kept), test accuracy 0.5000 on 4 "
        "images"
    )
    assert "None" not in line and "n/a" not in line
    with_val = done_line({"best_val_accuracy": 0.75, "best_epoch": 2}, {}, 3.0)
    assert with_val == "done in 3.0s: best val accuracy 0.7500 (epoch 2), no test split"
