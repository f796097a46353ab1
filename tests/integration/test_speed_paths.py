"""The fast paths train like the reference paths: the cached pipeline reaches the PIL
pipeline's accuracy, cached features give the head the slow path gives, and both resume exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import assert_ok, make_pre_split, train_smoke
from tests.integration.resuming import (
    assert_same_run,
    start,
    stop_with_usr1,
    train,
)

pytestmark = pytest.mark.slow(
    reason="trains on each input pipeline to compare accuracy, heads and resumes"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("speed") / "images"
    return make_pre_split(root, ["a", "b", "c"], {"train": 16, "val": 4, "test": 4})


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_cached_pipeline_learns_as_well_as_pil_and_says_what_it_chose(data, tmp_path):
    results = {}
    for pipeline in ("pil", "cached"):
        run = tmp_path / pipeline
        out = train_smoke(
            data, run, f"data.pipeline={pipeline}", "train.epochs=4", "train.batch_size=8"
        )
        assert_ok(out)
        results[pipeline] = summary(run)["test_accuracy"]
        said = "cached pipeline" if pipeline == "cached" else "data.pipeline=pil"
        assert said in out.stdout
    assert results["cached"] >= 0.9 and results["pil"] >= 0.9, results
    second = train_smoke(data, tmp_path / "again", "data.pipeline=cached", "train.epochs=1")
    assert_ok(second)
    # one cache holds every indexed file (train, val and test): reused whole, nothing decoded
    assert second.stdout.count("pixel cache: reusing") == 1
    assert "images decoded in" not in second.stdout


TWO_PHASE = (
    "train.epochs=null",
    "data.augment=false",
    "train.phases=[{name: head, epochs: 3, freeze: backbone, optim: {optimizer: adam, lr: 0.01}}]",
)


def test_cached_features_give_the_head_the_slow_path_gives(data, tmp_path):
    heads = {}
    for cache in ("true", "false"):
        run = tmp_path / cache
        out = train_smoke(
            data, run, *TWO_PHASE, f"train.feature_cache={cache}", "train.batch_size=8"
        )
        assert_ok(out)
        assert ("computed once" in out.stdout) == (cache == "true")
        heads[cache] = load_file(run / "model" / "model.safetensors")
    for key, tensor in heads["true"].items():
        torch.testing.assert_close(tensor, heads["false"][key], atol=1e-5, rtol=1e-4, msg=key)


def test_auto_caches_features_only_when_nothing_random_feeds_the_head(data, tmp_path):
    out = train_smoke(data, tmp_path / "aug", *TWO_PHASE[:1], TWO_PHASE[2], "data.augment=true")
    assert_ok(out)
    assert "features not cached (data.augment=true" in out.stdout
    out = train_smoke(data, tmp_path / "plain", *TWO_PHASE)
    assert_ok(out)
    assert "computed once" in out.stdout


def test_cached_pipeline_run_stopped_mid_epoch_resumes_exactly(data, tmp_path):
    extra = ("data.auto_augment=none", "data.pipeline=cached", "data.num_workers=1")
    reference = tmp_path / "reference"
    assert_ok(train(data, reference, 1, *extra))
    run = tmp_path / "run"
    proc = start(data, run, 1, *extra)
    stop_with_usr1(proc, run, 4)
    assert_ok(train(data, run, 1, *extra))
    assert_same_run(run, reference)


def test_decode_pipeline_trains_from_jpegs(data, tmp_path):
    from PIL import Image

    jpegs = tmp_path / "jpegs"
    for png in data.rglob("*.png"):
        target = jpegs / png.relative_to(data).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(png).save(target, quality=95)
    run = tmp_path / "run"
    out = train_smoke(jpegs, run, "data.pipeline=decode", "train.epochs=4", "train.batch_size=8")
    assert_ok(out)
    assert "decode pipeline" in out.stdout
    assert summary(run)["test_accuracy"] >= 0.9


def test_a_cache_held_in_device_memory_trains_the_same_weights(data, tmp_path):
    weights = {}
    for resident in ("true", "false"):
        run = tmp_path / resident
        out = train_smoke(
            data, run, "data.pipeline=cached", f"data.cache_on_device={resident}", "train.epochs=2"
        )
        assert_ok(out)
        assert ("held on the device" in out.stdout) == (resident == "true")
        weights[resident] = load_file(run / "model" / "model.safetensors")
    for key, tensor in weights["true"].items():
        assert torch.equal(tensor, weights["false"][key]), key
