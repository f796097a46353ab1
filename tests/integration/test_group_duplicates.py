"""A training run with data.group_duplicates on a pre-split folder without val/: the held-out
val share keeps each of the audit's copy groups whole, and the run says how many duplicate pairs
the audit found across the folder's splits."""

import csv

import pytest

from tests.conftest import assert_ok, make_pre_split, train_smoke
from trainer.data.groups import write_groups

pytestmark = pytest.mark.integration


def test_held_out_val_keeps_groups_whole_and_the_run_tells_the_leakage(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(tmp_path / "cache"))  # the run inherits it
    root = make_pre_split(tmp_path / "photos", ["a", "b"], {"train": 20, "test": 4})
    train = root / "train"
    groups = [[str(train / c / f"img_{i:03d}.png") for c in ("a", "b")] for i in range(6)]
    groups.append([str(train / "a" / f"img_{i:03d}.png") for i in range(10, 14)])
    write_groups(root, groups, cross_split=3)
    run = tmp_path / "run"
    proc = train_smoke(root, run, "train.epochs=1", "data.group_duplicates=true")
    assert_ok(proc)
    lines = [line for line in proc.stdout.splitlines() if "across its splits" in line]
    assert lines == [
        f"note: the audit of {root} found 3 duplicate pairs (exact or near) across its splits "
        f"(a val/test image with a copy in train flatters its numbers; `trainer audit {root}` "
        "lists them)"
    ]
    with open(run / "splits.csv", encoding="utf-8") as f:
        split_of = {str(root / r["path"]): r["split"] for r in csv.DictReader(f)}
    assert {split_of[p] for g in groups for p in g} == {"train", "val"}  # both parts have some
    assert all(len({split_of[p] for p in g}) == 1 for g in groups)
