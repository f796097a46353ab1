"""A first run decodes each image once (the pixel cache's decode is also the bad-file check); a
second run decodes none, and neither does a run of another pipeline that needs only the check."""

import csv
import json

import pytest

from tests.conftest import assert_ok, make_folder, train_smoke

pytestmark = pytest.mark.integration


def _summary(run):
    return json.loads((run / "summary.json").read_text())


def _bad_files(run):
    with open(run / "bad_files.csv", encoding="utf-8", newline="") as f:
        return [row["path"] for row in csv.DictReader(f)]


def test_a_first_run_decodes_each_image_once_and_a_second_none(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(tmp_path / "cache"))  # the runs inherit it
    root = make_folder(tmp_path / "images", ["a", "b"], 12)
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 60)  # a JPEG cut short
    files = 25

    first = train_smoke(root, tmp_path / "first", "train.epochs=1")
    assert_ok(first)
    assert _summary(tmp_path / "first")["pipeline"] == "cached"
    assert _summary(tmp_path / "first")["images_decoded"] == files
    assert f"({files} images decoded here)" in first.stdout
    # one pass over the files: the cache's build, no separate check before it
    assert first.stdout.count("images decoded in") == 1
    assert _bad_files(tmp_path / "first") == ["a/broken.jpg"]

    second = train_smoke(root, tmp_path / "second", "train.epochs=1")
    assert_ok(second)
    assert _summary(tmp_path / "second")["images_decoded"] == 0
    assert "(0 images decoded here)" in second.stdout and "pixel cache: reusing" in second.stdout
    assert _bad_files(tmp_path / "second") == ["a/broken.jpg"]

    # The cache's verdicts were kept for the bad-file check: a PIL run decodes nothing first.
    pil = train_smoke(root, tmp_path / "pil", "train.epochs=1", "data.pipeline=pil")
    assert_ok(pil)
    assert _summary(tmp_path / "pil")["images_decoded"] == 0
    assert _bad_files(tmp_path / "pil") == ["a/broken.jpg"]


def test_a_pil_run_checks_each_image_once_then_reads_the_verdicts(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "images", ["a", "b"], 6)
    for name, decoded in (("first", 12), ("second", 0)):
        out = train_smoke(root, tmp_path / name, "train.epochs=1", "data.pipeline=pil")
        assert_ok(out)
        assert _summary(tmp_path / name)["images_decoded"] == decoded
