"""Checkpoints: atomic, verified, pruned only after the new one is complete; JSON RNG states."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.config import OptimConfig
from trainer.train import checkpoint, optim


class OneProcess:
    is_main_process = True
    process_index = 0
    num_processes = 1

    def wait_for_everyone(self) -> None:
        pass


def _payload(step: int, is_best: bool = False) -> checkpoint.Payload:
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return checkpoint.Payload(
        trainer_state={"step": step, "epoch": step, "is_best": is_best},
        model=model.state_dict(),
        optimizer=opt.state_dict(),
        ema=None,
        rank_state={"rng": checkpoint.rng_state(), "sums": None},
    )


def _save(root: Path, step: int, keep_last: int = 2, is_best: bool = False) -> Path:
    return checkpoint.save(OneProcess(), root, step, _payload(step, is_best), keep_last, True)


def test_save_is_complete_and_loads_back(tmp_path):
    folder = _save(tmp_path, 3)
    assert folder.name == "step-00000003" and (folder / checkpoint.COMPLETE).is_file()
    assert not list(tmp_path.glob("*.tmp"))
    assert checkpoint.verify(folder)["step"] == 3
    loaded = checkpoint.load(folder, rank=0)
    assert set(loaded.model) == {"weight", "bias"}
    assert loaded.optimizer["state"][0]["exp_avg"].shape == (3, 4)
    assert "rng" in loaded.rank_state


def test_retention_keeps_last_n_and_the_best(tmp_path):
    _save(tmp_path, 1, is_best=True)
    for step in (2, 3, 4):
        _save(tmp_path, step)
    names = [p.name for p in checkpoint.complete_checkpoints(tmp_path)]
    assert names == ["step-00000001", "step-00000003", "step-00000004"]


def test_an_unfinished_save_is_never_chosen_and_never_costs_the_previous(tmp_path):
    _save(tmp_path, 1)
    half = tmp_path / "step-00000002.tmp"  # a save killed after its weights were written
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    found = checkpoint.newest_valid(tmp_path)
    assert found is not None and found[0].name == "step-00000001"
    _save(tmp_path, 2)  # the next save replaces the leftover
    assert [p.name for p in tmp_path.iterdir()] and not half.exists()


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# first: the weights' file write; last: the manifest
@pytest.mark.parametrize("writer", ["_Hashing.write", "torch.save", "_fsync"])
def test_a_save_that_fails_on_a_full_disk_removes_its_half_written_folder(
    tmp_path, monkeypatch, writer
):
    previous = _save(tmp_path, 1)
    before = {p.name: p.read_bytes() for p in previous.iterdir()}
    owner, name = {
        "torch.save": (torch, "save"),
        "_Hashing.write": (checkpoint._Hashing, "write"),
    }.get(writer, (checkpoint, writer))
    monkeypatch.setattr(owner, name, _disk_full)
    with pytest.raises(OSError) as failed:
        _save(tmp_path, 2)
    assert failed.value.errno == errno.ENOSPC and "step-00000002.tmp" in str(failed.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001"]
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before


def test_a_killed_saves_leftovers_are_removed_by_the_next_save_of_any_step(tmp_path):
    _save(tmp_path, 1)
    half = tmp_path / "step-00000007.tmp"  # killed mid-save; the resumed run saves step 2 next
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    (tmp_path / "notes.tmp").mkdir()  # not a name this program writes: left alone
    _save(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.tmp",
        "step-00000001",
        "step-00000002",
    ]


def test_saving_the_same_step_again_keeps_the_old_one_until_the_new_one_is_in_place(
    tmp_path, monkeypatch
):
    first = _save(tmp_path, 2)
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    monkeypatch.setattr(checkpoint._Hashing, "write", _disk_full)
    with pytest.raises(OSError):
        _save(tmp_path, 2)
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    monkeypatch.undo()
    again = _save(tmp_path, 2)
    assert checkpoint.verify(again)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002"]


def test_a_replacement_killed_between_its_two_renames_is_put_back_on_start(tmp_path):
    old = _save(tmp_path, 2).rename(tmp_path / "step-00000002.old")  # step-2 not yet renamed in
    checkpoint.remove_unfinished(tmp_path)
    assert not old.exists() and checkpoint.verify(tmp_path / "step-00000002")["step"] == 2
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["step-00000002"]


def test_a_truncated_checkpoint_is_refused_and_the_previous_used(tmp_path):
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2)
    weights = newest / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        checkpoint.verify(newest)
    warnings: list[str] = []
    found = checkpoint.newest_valid(tmp_path, warn=warnings.append)
    assert found[0].name == "step-00000001"
    assert "step-00000002" in warnings[0] and "model.safetensors" in warnings[0]


def test_a_flipped_byte_is_found_by_the_manifest(tmp_path):
    folder = _save(tmp_path, 1)
    path = folder / "optimizer.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="damaged"):
        checkpoint.verify(folder)


@pytest.mark.parametrize("manifest", ['["not", "a", "dict"]', '{"files": {"x": 3}}', "\udcff"])
def test_a_manifest_that_is_not_one_is_a_checkpoint_error_naming_it(tmp_path, manifest):
    folder = _save(tmp_path, 1)
    (folder / checkpoint.COMPLETE).write_text(manifest, encoding="utf-8", errors="surrogateescape")
    with pytest.raises(checkpoint.CheckpointError, match=checkpoint.COMPLETE):
        checkpoint.verify(folder)


def test_an_unreadable_rank_state_is_a_checkpoint_error_naming_the_file(tmp_path):
    folder = _save(tmp_path, 1)
    (folder / "rank-00000.json").write_bytes(b"{ torn")
    with pytest.raises(checkpoint.CheckpointError, match="rank-00000.json"):
        checkpoint.load(folder, rank=0)


def test_an_optimizer_file_that_would_run_code_is_refused(tmp_path):
    folder = _save(tmp_path, 1)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state": Payload()}, folder / "optimizer.pt")
    with pytest.raises(checkpoint.CheckpointError, match="cannot be loaded"):
        checkpoint.load(folder, rank=0)
    assert not marker.exists()


def test_rng_states_round_trip_through_json():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = checkpoint.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    checkpoint.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_a_restored_schedule_continues_with_the_rate_it_had():
    cfg = OptimConfig(scheduler="cosine", warmup_epochs=1)

    def build():
        opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        return opt, optim.build_scheduler(opt, cfg, steps_per_epoch=4, epochs=3)

    opt, sched = build()
    for _ in range(6):
        opt.step()
        sched.step()
    saved = {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}
    opt2, sched2 = build()
    optim.restore_scheduler(sched2, saved)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_requeue_names_the_array_task_or_the_job(monkeypatch):
    from trainer.train import preemption

    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    assert preemption.slurm_job_id() is None
    assert preemption.requeue() is False  # not under Slurm: nothing to do
    monkeypatch.setenv("SLURM_JOB_ID", "101")
    assert preemption.slurm_job_id() == "101"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "100")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert preemption.slurm_job_id() == "100_7"
