"""GPU checks: skipped on machines without CUDA."""

import json

import pytest
import torch

from tests.conftest import assert_ok, make_folder, train_smoke

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_bf16_training_on_one_gpu(tmp_path):
    root = make_folder(tmp_path / "images", ["a", "b"], 16)
    run = tmp_path / "run"
    proc = train_smoke(root, run, "train.mixed_precision=bf16")
    assert_ok(proc)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mixed_precision"] == "bf16" and summary["epochs"] == 2
