"""Training steps in each precision on the check device, the cached pipeline with channels_last,
bf16 and torch.compile, and its eval pixels against the CPU's. Skipped without a check device
(tests/gpu/checkdevice.py): CUDA, or the CPU under `launch/gpu_check.sh --cpu`."""

import json

import pytest
import torch

from tests.conftest import assert_ok, make_folder
from tests.gpu.checkdevice import (
    assert_finite_losses,
    check_device,
    needs_cuda,
    on_check_device,
    train_tiny,
)

pytestmark = on_check_device


FP16_ON_CPU = "accelerate runs fp16 on the CPU without autocast or a grad scaler (native_amp off)"


@pytest.mark.parametrize("precision", ["bf16", pytest.param("fp16", marks=needs_cuda(FP16_ON_CPU))])
def test_mixed_precision_training_steps_have_finite_losses(tmp_path, precision):
    root = make_folder(tmp_path / "images", ["a", "b"], 16)
    run = tmp_path / "run"
    proc = train_tiny(root, run, f"train.mixed_precision={precision}", "train.log_every=1")
    assert_ok(proc)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mixed_precision"] == precision and summary["epochs"] == 2
    assert_finite_losses(run)


@needs_cuda("torch.compile on the CPU is tests/integration/test_cpu_precision.py's (minutes here)")
def test_cached_pipeline_with_channels_last_bf16_and_compile_on_gpu(tmp_path):
    root = make_folder(tmp_path / "images", ["a", "b"], 16)
    run = tmp_path / "run"
    proc = train_tiny(
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
    assert_finite_losses(run)


def test_cached_eval_pixels_on_the_device_match_the_cpu(tmp_path):
    from trainer.config import DataConfig
    from trainer.data.pipelines import cached, device, pixelcache
    from trainer.data.transforms import IMAGENET

    root = make_folder(tmp_path / "images", ["a"], 4, size=300)
    paths = sorted(str(p) for p in (root / "a").iterdir())
    cache = pixelcache.build(paths, IMAGENET, DataConfig(cache_dir=str(tmp_path / "c")), workers=1)
    view = cached.CachedEvalView(cache, [0] * 4, IMAGENET.image_size)
    batch = {"pixels": torch.stack([view[i]["pixels"] for i in range(4)])}
    cpu = device.DeviceTransform(IMAGENET, torch.device("cpu"))(dict(batch))["pixel_values"]
    there = check_device()
    on_device = {"pixels": batch["pixels"].to(there)}
    got = device.DeviceTransform(IMAGENET, there)(on_device)["pixel_values"]
    torch.testing.assert_close(got.cpu(), cpu, atol=1e-5, rtol=0)
