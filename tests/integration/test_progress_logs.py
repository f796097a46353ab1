"""A run whose output goes to a file (Slurm's slurm-*.out) logs progress as plain lines."""

from __future__ import annotations

from tests.conftest import assert_ok, train_smoke


def test_a_logged_run_has_plain_progress_lines_and_no_bar_fragments(image_folder, tmp_path):
    proc = train_smoke(
        image_folder, tmp_path / "run", "train.batch_size=8", env={"TRAINER_PROGRESS_SECONDS": "0"}
    )
    assert_ok(proc)
    log = proc.stdout + proc.stderr
    assert "\r" not in log and "%|" not in log  # no carriage return, no tqdm bar
    lines = proc.stderr.splitlines()
    assert any(line.startswith("train epoch 1: 1/") and "batches/s" in line for line in lines)
    assert any(line.startswith("train epoch 2: ") and "loss=" in line for line in lines)
    assert any(line.startswith("val: ") for line in lines)
