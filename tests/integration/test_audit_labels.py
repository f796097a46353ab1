"""`trainer audit` finds planted label errors with a backbone the test trains first.

scikit-learn's digits written as an image folder, 5% of the images moved to a wrong class
folder; the tests' tiny model (TINY_MODEL, the digits recipe, 4 epochs: no pretrained weights
can be downloaded here) trained on that folder gives the embeddings. Measured on this machine
(2026-12-07): 75 of the 90 planted moves among the top 90 flagged, and 3 of the 1,797 images of
the folder without moves flagged (2 epochs: 68 and 19; ResNet-18, 6 epochs: 79 and 5, at 4x
the time); the unit tests (tests/unit/test_audit_findings.py) check the rule itself on raw pixels.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_MODEL, assert_ok, cli_here
from trainer.data.demo import write_digits

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow(reason="trains a model on planted label errors and audits it"),
]

MOVED_SHARE = 0.05


def move_some(root: Path, seed: int = 0) -> set[str]:
    """Move MOVED_SHARE of the images to another class folder; their new paths, relative to root."""
    files = sorted(root.rglob("*.png"))
    rng = np.random.default_rng(seed)
    moved = set()
    for row in rng.choice(len(files), round(MOVED_SHARE * len(files)), replace=False):
        f = files[row]
        digit = int(f.parent.name)
        target = root / str((digit + int(rng.integers(1, 10))) % 10) / f"moved_{digit}_{f.name}"
        f.rename(target)
        moved.add(target.relative_to(root).as_posix())
    return moved


def flagged(out: Path) -> list[str]:
    with open(out / "label_issues.csv", newline="", encoding="utf-8") as f:
        return [row["path"] for row in csv.DictReader(f)]


def test_planted_label_errors_rank_first_and_a_clean_folder_has_few(tmp_path):
    clean = Path(write_digits(tmp_path / "clean"))
    moved_root = tmp_path / "moved"
    shutil.copytree(clean, moved_root)
    moved = move_some(moved_root)
    run = tmp_path / "run"
    assert_ok(
        cli_here(
            "trainer", "train", "--config", "digits", f"data.root={moved_root}",
            f"output_dir={run}", "train.epochs=4", "data.num_workers=0", f"model.name={TINY_MODEL}",
        )
    )  # fmt: skip
    model = str(run / "model")
    for root, out in ((moved_root, tmp_path / "a_moved"), (clean, tmp_path / "a_clean")):
        proc = cli_here("trainer", "audit", str(root), "--model", model, "--out", str(out))
        assert_ok(proc)
    top = flagged(tmp_path / "a_moved")[: len(moved)]
    hits = sum(path in moved for path in top)
    assert hits >= len(moved) / 2, f"{hits} of the top {len(moved)} flagged were planted"
    assert len(flagged(tmp_path / "a_clean")) <= 0.02 * 1797
