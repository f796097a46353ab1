"""The fast input paths on the check device give what the slow ones give: the pixel cache held in
host memory or on the device, JPEGs decoded on the device (nvJPEG on a GPU) or by Pillow, a
frozen phase on cached features or on images.

Tolerances (each test records the difference it measured, for `launch/gpu_check.sh`):
- cache placement: the same uint8 pixels and crop draws, so the same weights; exact on the CPU,
  max |difference| <= 1e-4 on CUDA (fp32, timm's test_resnet, 1 epoch, under tests/gpu/deterministic.py;
  a few CUDA kernels, e.g. adaptive average pooling's backward, have no deterministic version).
- JPEG decoding: two decoders' IDCT and chroma upsampling differ (libjpeg-turbo in torchvision
  and Pillow agree exactly on the CPU): mean |difference| <= 2 levels of 255 and 99.9% of the
  values within 32; the windows (shorter side S) after the antialiased resize (torch on the device vs
  Pillow; on the CPU mean 0.37, 99.9% within 6, max 11) within mean 2.5 and the same 32. A
  wrong decode (channels swapped, another orientation, a shifted crop) is off by tens on average.
- feature cache: the same batches in the same order through the same frozen backbone, the
  features computed in eval batches instead of training batches: head weights within
  max |difference| 1e-5 on the CPU and 1e-4 on CUDA (fp32); the backbone exactly unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from tests.conftest import TINY_MODEL, assert_ok, make_folder
from tests.gpu.checkdevice import (
    assert_finite_losses,
    check_device,
    max_difference,
    on_check_device,
    on_cpu,
    record,
    run_python,
    train_tiny,
)

pytestmark = on_check_device

DETERMINISTIC = Path(__file__).with_name("deterministic.py")


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def train_deterministic(root: Path, run: Path, *overrides: str):
    """train_tiny under tests/gpu/deterministic.py (deterministic cuDNN/cuBLAS where they have it)."""
    # One epoch: the model kept is the last one (with more, a val accuracy tied between epochs
    # could make two close runs keep different epochs); no checkpoints to write.
    args = ("--config", "cpu-smoke", f"model.name={TINY_MODEL}", "train.epochs=1")
    args += (f"data.root={root}", f"output_dir={run}")
    args += ("checkpoint.enabled=false", *overrides)
    return run_python(str(DETERMINISTIC), "train", *args)


def test_pixel_cache_in_host_memory_and_on_the_device_train_the_same_weights(tmp_path):
    root = make_folder(tmp_path / "images", ["a", "b"], 16, size=48)
    found = {}
    for resident in ("false", "true"):
        run = tmp_path / f"run-{resident}"
        proc = train_deterministic(
            root, run, "data.pipeline=cached", f"data.cache_on_device={resident}"
        )
        assert_ok(proc)
        assert ("held on the device" in proc.stdout) == (resident == "true"), proc.stdout[-2000:]
        found[resident] = weights(run)
    diff = max_difference(found["true"], found["false"])
    tolerance = 0.0 if on_cpu() else 1e-4
    record("cache_on_device", max_abs_weight_difference=diff, tolerance=tolerance)
    assert diff <= tolerance


def _jpegs(folder: Path) -> list[Path]:
    """Photo-like JPEGs of several sizes, 4:2:0 (Pillow's default) and 4:4:4 chroma."""
    from trainer.bench.images import synthetic_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (size, subsampling) in enumerate(
        [((500, 375), 2), ((224, 224), 2), ((131, 97), 2), ((375, 500), 0), ((64, 300), 0)]
    ):
        path = folder / f"img_{i}.jpg"
        synthetic_image(i, i % 3, size, 3).save(path, quality=90, subsampling=subsampling)
        paths.append(path)
    return paths


def _differences(got: list[torch.Tensor], want: list[np.ndarray]) -> dict[str, float]:
    diff = np.concatenate(
        [
            np.abs(g.cpu().numpy().astype(np.int16) - w.astype(np.int16)).ravel()
            for g, w in zip(got, want)
        ]
    )
    return {
        "mean": float(diff.mean()),
        "p99_9": float(np.quantile(diff, 0.999)),
        "max": float(diff.max()),
    }


def test_jpeg_decoding_on_the_device_matches_pillow(tmp_path):
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    from trainer.data.pipelines import device as on_device
    from trainer.data.pipelines import pixelcache
    from trainer.data.transforms import IMAGENET

    there = check_device()
    paths = _jpegs(tmp_path / "jpegs")
    encoded = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=there)
    pillow = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    raw = _differences([d.permute(1, 2, 0) for d in decoded], pillow)
    squares, _ = on_device.decode_windows(encoded, [None] * len(paths), IMAGENET, there)
    cached = [pixelcache.decode(str(p), IMAGENET, IMAGENET.resize_size)[0] for p in paths]
    squared = _differences(list(squares), cached)
    tolerance = "mean <= 2 (2.5 squared), p99.9 <= 32"
    record("jpeg_decode", decode=raw, squares=squared, tolerance=tolerance)
    assert raw["mean"] <= 2.0 and raw["p99_9"] <= 32, raw
    assert squared["mean"] <= 2.5 and squared["p99_9"] <= 32, squared


def test_decode_pipeline_trains_on_the_device(tmp_path):
    from trainer.bench.images import make_jpeg_folder

    root = tmp_path / "jpegs"
    make_jpeg_folder(root, {"": 32}, (96, 72), 2, workers=1)
    run = tmp_path / "run"
    proc = train_tiny(root, run, "data.pipeline=decode", "train.log_every=1")
    assert_ok(proc)
    assert "decode pipeline" in proc.stdout
    assert_finite_losses(run)


def test_feature_cache_trains_the_head_the_slow_path_trains(tmp_path):
    root = make_folder(tmp_path / "images", ["a", "b", "c"], 12, size=48)
    phase = "train.phases=[{name: head, epochs: 1, freeze: backbone, augment: false}]"
    found = {}
    for cache in ("false", "true"):
        run = tmp_path / f"run-{cache}"
        proc = train_deterministic(
            root,
            run,
            phase,
            "data.pipeline=pil",  # the feature cache's features come from the PIL eval view
            "train.freeze_bn=true",
            "train.mixed_precision='no'",  # quoted: YAML reads a bare no as false
            f"train.feature_cache={cache}",
        )
        assert_ok(proc)
        assert ("computed once" in proc.stdout) == (cache == "true"), proc.stdout[-2000:]
        found[cache] = weights(run)
    head = {k: v for k, v in found["true"].items() if k.startswith("head.")}
    slow = {k: v for k, v in found["false"].items() if k.startswith("head.")}
    assert head, sorted(found["true"])[:5]
    diff = max_difference(head, slow)
    tolerance = 1e-5 if on_cpu() else 1e-4
    record("feature_cache", max_abs_head_difference=diff, tolerance=tolerance)
    assert diff <= tolerance
    backbone = {k for k in found["true"] if not k.startswith("head.")}
    assert all(torch.equal(found["true"][k], found["false"][k]) for k in backbone)
