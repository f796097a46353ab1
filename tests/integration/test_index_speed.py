"""Indexing holds up at 10^5-10^6 file names (issue 15: under 10 s per 100,000 files on the
2-core test machine), and shows its progress only when it takes seconds."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import make_folder
from trainer.config import DataConfig
from trainer.data import walk
from trainer.data.splits import scan

pytestmark = pytest.mark.integration


def empty_images(root: Path, n: int, classes: int) -> Path:
    """`n` empty files named .jpg in `classes` class folders: nothing is decoded with
    data.check_images=false, so only the names matter."""
    for c in range(classes):
        folder = root / f"class{c:03d}"
        folder.mkdir(parents=True)
        for i in range(c, n, classes):
            os.close(os.open(folder / f"img{i:07d}.jpg", os.O_CREAT | os.O_WRONLY, 0o644))
    return root


def test_index_of_200000_empty_files_in_100_classes_takes_under_20_s(tmp_path):
    root = empty_images(tmp_path / "images", 200_000, 100)
    started = time.perf_counter()
    index = scan(DataConfig(root=str(root), check_images=False))
    seconds = time.perf_counter() - started
    assert len(index.class_names) == 100
    assert sum(index.counts().values()) == 200_000
    assert seconds < 20, f"indexing 200,000 file names took {seconds:.1f} s"


def test_a_quick_index_prints_no_progress(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRAINER_PROGRESS_SECONDS", "0")  # a line at every update once shown
    scan(DataConfig(root=str(make_folder(tmp_path / "d", ["a", "b"], 3)), check_images=False))
    assert capsys.readouterr().err == ""


def test_a_slow_index_shows_files_listed_so_far(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRAINER_PROGRESS_SECONDS", "0")
    monkeypatch.setattr(walk, "QUIET_SECONDS", 0.0)  # as if listing had taken seconds
    root = make_folder(tmp_path / "d", ["a", "b"], 3)
    scan(DataConfig(root=str(root), check_images=False))
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith(f"indexing {root}: ") for line in lines), lines
    assert lines[-1].startswith(f"indexing {root}: 6 files, ")
