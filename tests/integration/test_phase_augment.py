"""Augmentation per phase (train.phases.N.augment) and the `transfer` recipe built on it: a
linear probe on cached features of the eval view, then fine-tuning on augmented images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY_MODEL, assert_ok, cli_here, make_pre_split, train_smoke

SMALL = (
    f"model.name={TINY_MODEL}",
    "model.pretrained=false",
    "data.image_size=32",
    "data.num_workers=0",
    "train.batch_size=8",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phase-augment") / "images"
    return make_pre_split(root, ["a", "b", "c"], {"train": 16, "val": 4, "test": 4})


def _phase(augment: str) -> str:
    return (
        "train.phases=[{name: head, epochs: 2, freeze: backbone, "
        f"optim: {{optimizer: adam, lr: 0.01}}{augment}}}]"
    )


@pytest.mark.parametrize("pipeline", ["pil", "cached"])
def test_a_phase_that_does_not_augment_trains_as_data_augment_false_does(data, tmp_path, pipeline):
    """augment=false on the phase overrides data.augment=true: the same weights, bit for bit, as
    a run with data.augment=false (the features are not cached in either, to compare images)."""
    common = ("train.epochs=null", f"data.pipeline={pipeline}", "train.feature_cache=false")
    weights = {}
    for name, overrides in {
        "phase": ("data.augment=true", _phase(", augment: false")),
        "data": ("data.augment=false", _phase("")),
    }.items():
        run = tmp_path / name
        out = train_smoke(data, run, *common, *overrides)
        assert_ok(out)
        assert "augment off" in out.stdout
        weights[name] = load_file(run / "model" / "model.safetensors")
    for key, tensor in weights["phase"].items():
        assert torch.equal(tensor, weights["data"][key]), key
    augmented = tmp_path / "augmented"
    out = train_smoke(data, augmented, *common, "data.augment=false", _phase(", augment: true"))
    assert_ok(out)
    assert "augment on" in out.stdout
    trained = load_file(augmented / "model" / "model.safetensors")
    assert any(not torch.equal(t, weights["data"][k]) for k, t in trained.items())


def test_transfer_recipe_probes_on_cached_features_then_fine_tunes_augmented(data, tmp_path):
    run = tmp_path / "run"
    out = cli_here(
        "trainer",
        "train",
        "--config",
        "transfer",
        f"data.root={data}",
        f"output_dir={run}",
        *SMALL,
        "train.phases.0.epochs=3",
        "train.phases.1.epochs=1",
    )
    assert_ok(out)
    probe, finetune = out.stdout.split("phase 2/2")
    assert "phase 1/2 'probe'" in probe and "augment off" in probe
    assert "computed once" in probe  # the head trained on cached features
    assert "'finetune'" in finetune and "augment on" in finetune
    assert "computed once" not in finetune
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 4 and summary["test_samples"] == 12
