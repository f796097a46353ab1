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


def test_cached_pipeline_with_channels_last_bf16_and_compile_on_gpu(tmp_path):
    root = make_folder(tmp_path / "images", ["a", "b"], 16)
    run = tmp_path / "run"
    proc = train_smoke(
        root,
        run,
        "train.mixed_precision=bf16",
        "data.pipeline=cached",
        "train.channels_last=true",
        "train.compile=true",
        "data.num_workers=2",
    )
    assert_ok(proc)
    assert "cached pipeline" in proc.stdout


def test_cached_eval_pixels_on_gpu_match_the_cpu(tmp_path):
    from trainer.config import DataConfig
    from trainer.data.pipelines import cached, device, pixelcache
    from trainer.data.transforms import IMAGENET

    root = make_folder(tmp_path / "images", ["a"], 4, size=300)
    paths = sorted(str(p) for p in (root / "a").iterdir())
    cache = pixelcache.build(paths, IMAGENET, DataConfig(cache_dir=str(tmp_path / "c")), workers=1)
    view = cached.CachedEvalView(cache, [0] * 4, IMAGENET.image_size)
    batch = {"pixels": torch.stack([view[i]["pixels"] for i in range(4)])}
    cpu = device.DeviceTransform(IMAGENET, torch.device("cpu"))(dict(batch))["pixel_values"]
    gpu_batch = {"pixels": batch["pixels"].cuda()}
    gpu = device.DeviceTransform(IMAGENET, torch.device("cuda"))(gpu_batch)["pixel_values"]
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)
