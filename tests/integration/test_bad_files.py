"""A run over a folder full of broken and odd files trains on the good ones and says what it left out."""

import csv

import pytest

from tests.conftest import accelerate_launch, assert_ok, make_folder, train_smoke
from tests.image_corpus import BAD, GOOD_ODD, write_corpus

pytestmark = pytest.mark.integration


@pytest.fixture
def messy_folder(tmp_path):
    root = make_folder(tmp_path / "images", ["cat", "dog", "fox"], 12)
    write_corpus(root / "cat")
    (root / "only-broken").mkdir()
    (root / "only-broken" / "x.jpg").write_bytes(b"")  # a class of nothing but a bad file
    return root


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(tmp_path / "cache"))  # the runs inherit it


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _check_run(run, out: str) -> None:
    splits = _rows(run / "splits.csv")
    names = {r["path"].rsplit("/", 1)[-1] for r in splits}
    assert not names & set(BAD) and set(GOOD_ODD) <= names
    assert {r["label"] for r in splits} == {"cat", "dog", "fox"}
    assert f"{len(BAD) + 1} bad files skipped" in out
    assert "only-broken holds no usable images" in out
    rows = {r["path"]: r["reason"] for r in _rows(run / "bad_files.csv")}
    assert set(rows) == {f"cat/{name}" for name in BAD} | {"only-broken/x.jpg"}
    assert rows["cat/truncated.jpg"].startswith("truncated JPEG")


def test_training_skips_bad_files_and_completes(messy_folder, tmp_path):
    run = tmp_path / "run"
    proc = train_smoke(messy_folder, run, "train.epochs=1")
    assert_ok(proc)
    _check_run(run, proc.stdout + proc.stderr)


@pytest.mark.slow(reason="2 gloo processes train on the messy folder")
def test_two_processes_skip_the_same_files(messy_folder, tmp_path):
    run = tmp_path / "run"
    proc = accelerate_launch(
        "train.py",
        "--config",
        "cpu-smoke",
        f"data.root={messy_folder}",
        f"output_dir={run}",
        "train.epochs=1",
    )
    assert_ok(proc)
    _check_run(run, proc.stdout + proc.stderr)


def test_on_bad_file_error_stops_before_training_naming_the_files(messy_folder, tmp_path):
    proc = train_smoke(messy_folder, tmp_path / "run", "data.on_bad_file=error")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cat/truncated.jpg: truncated JPEG" in proc.stderr
    assert "data.on_bad_file=skip" in proc.stderr and "Traceback" not in proc.stderr
