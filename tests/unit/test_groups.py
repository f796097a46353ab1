"""The audit's duplicate groups are saved per image root, read back, and a bad file reads as none."""

import json

import pytest

from trainer.data.groups import GROUPS_VERSION, groups_file, read_groups, write_groups


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
