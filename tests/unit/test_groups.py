"""The audit's duplicate groups: saved per image root, read back (a bad file reads as none), and
kept inside one split by data.group_duplicates; a pre-split folder's leakage is told."""

import json
import os
from pathlib import Path

import pytest

from trainer.config import DataConfig
from trainer.data.groups import (
    GROUPS_VERSION,
    groups_file,
    index_groups,
    read_groups,
    write_groups,
)
from trainer.data.layout import DataError
from trainer.data.splits import scan, stratified_split


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(tmp_path / "cache"))


def test_groups_round_trip_per_root(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    groups = [
        [str(root / "a" / "1.png"), str(root / "b" / "1.png")],
        [str(root / "a" / "2.png")] * 3,
    ]
    write_groups(root, groups, cross_split=2)
    assert groups_file(root).parent == tmp_path / "cache" / "audit"
    assert read_groups(root) == (groups, 2)
    assert read_groups(str(root) + "/") == (groups, 2)  # the same folder, spelled differently
    assert read_groups(tmp_path / "other") is None
    write_groups(root, [], cross_split=0)  # a later audit replaces the earlier groups
    assert read_groups(root) == ([], 0)
    assert [p.name for p in groups_file(root).parent.iterdir()] == [groups_file(root).name]


def test_single_images_are_not_groups(tmp_path):
    write_groups(tmp_path, [["/x/a.png"], ["/x/b.png", "/x/c.png"]], cross_split=0)
    assert read_groups(tmp_path) == ([["/x/b.png", "/x/c.png"]], 0)


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        json.dumps({"version": GROUPS_VERSION + 1, "groups": [], "cross_split": 0}),
        json.dumps({"version": GROUPS_VERSION, "groups": [[1, 2]], "cross_split": 0}),
        json.dumps({"version": GROUPS_VERSION, "groups": [], "cross_split": "3"}),
        json.dumps({"version": GROUPS_VERSION, "cross_split": 0}),
        json.dumps([1, 2]),
    ],
)
def test_a_corrupt_or_other_version_file_reads_as_no_audit(tmp_path, text):
    path = groups_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(text, encoding="utf-8")
    assert read_groups(tmp_path) is None


def test_index_groups_merge_shared_images_and_speak_the_index_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = ["d/a/1.png", "d/a/2.png", "d/b/3.png", "d/b/4.png", "d/b/5.png"]
    audit = [
        [str(tmp_path / "d/a/1.png"), str(tmp_path / "d/b/3.png")],
        [str(tmp_path / "d/b/3.png"), str(tmp_path / "d/b/4.png")],  # shares 3: one group
        [str(tmp_path / "d/a/2.png"), str(tmp_path / "d/gone.png")],  # one image left: none
    ]
    assert index_groups(audit, paths) == [["d/a/1.png", "d/b/3.png", "d/b/4.png"]]


def test_without_groups_the_split_is_the_one_before_groups_existed():
    items = [(f"{c}/{i:02d}.png", k) for k, c in enumerate("ab") for i in range(10)]
    parts = stratified_split(items, [0.7, 0.2, 0.1], 42, ["a", "b"])
    # Frozen from the split before data.group_duplicates: every splits.csv depends on it.
    assert [[p for p, _ in part] for part in parts[1:]] == [
        ["a/04.png", "a/09.png", "b/00.png", "b/08.png"],
        ["a/08.png", "b/05.png"],
    ]
    assert stratified_split(items, [0.7, 0.2, 0.1], 42, ["a", "b"], groups=[]) == parts


def _folder(root: Path, per_class: int = 30) -> Path:
    """Empty files named as images: the split reads names only (data.check_images=false)."""
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            (root / c / f"{i:03d}.png").touch()
    return root


def _split_of(index) -> dict[str, str]:
    return {os.path.abspath(p): s for s, items in index.splits.items() for p, _ in items}


def test_group_duplicates_keeps_every_planted_group_in_one_split(tmp_path):
    root = _folder(tmp_path / "photos")
    groups = [[str(root / c / f"{i:03d}.png") for c in "abc"[: 2 + i % 2]] for i in range(12)]
    groups += [[str(root / "a" / f"{i:03d}.png") for i in range(20, 26)]]  # a big one, one class
    write_groups(root, groups, cross_split=0)
    plain = DataConfig(root=str(root), check_images=False)
    grouped = DataConfig(root=str(root), check_images=False, group_duplicates=True)
    before = _split_of(scan(plain))
    after = _split_of(scan(grouped))
    assert sorted(after) == sorted(before)  # the same images, only placed differently
    straddling = [g for g in groups if len({before[p] for p in g}) > 1]
    assert straddling, "the planted groups must straddle splits without grouping"
    assert all(len({after[p] for p in g}) == 1 for g in groups)
    counts = scan(grouped).counts()
    assert counts["train"] > counts["val"] > counts["test"] > 0  # still roughly 70/20/10
    assert scan(plain).splits == scan(plain).splits  # an audit changes nothing unless asked


def test_group_duplicates_without_an_audit_says_to_run_one(tmp_path):
    root = _folder(tmp_path / "photos", per_class=5)
    cfg = DataConfig(root=str(root), check_images=False, group_duplicates=True)
    with pytest.raises(DataError) as e:
        scan(cfg)
    assert str(e.value) == (
        "data.group_duplicates=true needs an audit of this folder: "
        f"run `trainer audit {root}` first"
    )


def test_a_pre_split_folder_with_an_audit_tells_its_cross_split_duplicates(tmp_path):
    root = tmp_path / "photos"
    for split in ("train", "val"):
        _folder(root / split, per_class=4)
    cfg = DataConfig(root=str(root), check_images=False)
    assert not [n for n in scan(cfg).notes if "across its splits" in n]  # no audit: nothing said
    write_groups(root, [[str(root / "train/a/000.png"), str(root / "val/a/000.png")]], 1)
    notes = [n for n in scan(cfg).notes if "across its splits" in n]
    assert len(notes) == 1 and f"the audit of {root} found 1 duplicate pairs" in notes[0]
    write_groups(root, [], 0)
    notes = [n for n in scan(cfg).notes if "across its splits" in n]
    assert notes == [f"the audit of {root} found no duplicates across its splits"]


def test_resume_refuses_a_changed_group_duplicates_but_not_a_config_from_before_it(tmp_path):
    from trainer.config import ConfigError, RunConfig, dump_yaml
    from trainer.train.resume import _check_same_settings

    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000001"
    saved = tmp_path / "run" / "config.yaml"
    saved.parent.mkdir()
    saved.write_text(dump_yaml(RunConfig()).replace("  group_duplicates: false\n", ""))
    assert "group_duplicates" not in saved.read_text()
    _check_same_settings(RunConfig(), checkpoint)  # an older version's run continues
    grouped = RunConfig()
    grouped.data.group_duplicates = True
    with pytest.raises(ConfigError, match="data.group_duplicates: False -> True"):
        _check_same_settings(grouped, checkpoint)
