"""What a CPU can run of the GPU path: training steps under bf16 autocast, and a torch.compile'd
model (timm's tiny test_resnet at 32 px: inductor compiles it in seconds, ResNet-18 in minutes)."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import assert_ok, make_folder, make_pre_split, train_smoke

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow(reason="bf16 autocast training and torch.compile (inductor) on the CPU"),
]


def losses(run) -> list[float]:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [e["loss"] for e in events if e.get("event") == "train"]


def test_bf16_autocast_training_steps_on_the_cpu(tmp_path):
    root = make_folder(tmp_path / "images", ["a", "b"], 8)
    run = tmp_path / "run"
    proc = train_smoke(
        root, run, "train.mixed_precision=bf16", "train.epochs=1", "train.log_every=1"
    )
    assert_ok(proc)
    assert "on cpu, mixed_precision=bf16" in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mixed_precision"] == "bf16"
    found = losses(run)
    assert found and all(math.isfinite(x) for x in found), found


def test_compiled_tiny_model_trains_on_the_cpu(tmp_path):
    # Every batch the same shape (16/8/8 images, batches of 8): one graph for training, one for
    # evaluation; a last short batch would make inductor compile again for dynamic shapes.
    root = make_pre_split(tmp_path / "images", ["a", "b"], {"train": 8, "val": 4, "test": 4})
    run, inductor = tmp_path / "run", tmp_path / "inductor"
    proc = train_smoke(
        root,
        run,
        "model.name=timm/test_resnet",
        "train.compile=true",
        "train.epochs=1",
        "train.eval_batch_size=8",
        "train.log_every=1",
        "checkpoint.enabled=false",
        env={"TORCHINDUCTOR_CACHE_DIR": str(inductor)},
    )
    assert_ok(proc)
    assert any(inductor.rglob("*.py")), "inductor wrote no code: the model was not compiled"
    found = losses(run)
    assert found and all(math.isfinite(x) for x in found), found
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 1
