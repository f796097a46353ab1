"""The cached pipeline: the same eval pixels as the PIL path, a cache keyed by what it depends
on, and per-image crop/flip draws that depend only on (seed, epoch, row)."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.config import ConfigError, DataConfig
from trainer.data.layout import DataError
from trainer.data.pipelines import choose, decode, device, pil, pixelcache
from trainer.data.pipelines.cached import CachedEvalView, CachedTrainView
from trainer.data.pipelines.geometry import crop_box
from trainer.data.transforms import Preprocessing, eval_transform, load_rgb

PRE = Preprocessing(32, 37, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(50, 37), (37, 50), (64, 64), (81, 40), (45, 120), (37, 37)]):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _cfg(tmp_path: Path, **kw) -> DataConfig:
    return DataConfig(cache_dir=str(tmp_path / "cache"), **kw)


def test_eval_view_from_the_cache_equals_the_pil_eval_transform(images, tmp_path):
    cache = pixelcache.build(images, PRE, _cfg(tmp_path), workers=2)
    view = CachedEvalView(cache, [0] * len(images), PRE.image_size)
    to_float = device.DeviceTransform(PRE, torch.device("cpu"))
    for row, path in enumerate(images):
        sample = view[row]
        got = to_float({"pixels": sample["pixels"][None]})["pixel_values"][0]
        want = eval_transform(PRE)(load_rgb(path))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_the_cache_is_reused_and_rebuilt_when_data_or_resolution_change(images, tmp_path):
    said: list[str] = []
    first = pixelcache.build(images, PRE, _cfg(tmp_path), workers=1, say=said.append)
    again = pixelcache.build(images, PRE, _cfg(tmp_path), workers=1, say=said.append)
    assert again.folder == first.folder and "reusing" in said[-1]
    bigger = PRE.with_size(48)
    assert pixelcache.build(images, bigger, _cfg(tmp_path), workers=1).folder != first.folder
    Image.new("RGB", (40, 40), (1, 2, 3)).save(images[0])  # new content, size and mtime
    os.utime(images[0], ns=(1, 1))
    rebuilt = pixelcache.build(images, PRE, _cfg(tmp_path), workers=1, say=said.append)
    assert rebuilt.folder != first.folder and "decoded" in said[-1]
    assert rebuilt.pixels[0, 10, 10].tolist() == [1, 2, 3]


def test_a_new_cache_removes_caches_of_an_older_format_and_nothing_else(images, tmp_path):
    root = tmp_path / "cache"
    old_meta = {"images": 2, "size": 37, "bytes": 8214, "format": pixelcache.FORMAT - 1}
    kept_meta = {**old_meta, "format": pixelcache.FORMAT}
    folders = {
        "old": ("0" * 32, old_meta),
        "current": ("1" * 32, kept_meta),
        "not-a-key": ("photos", old_meta),
        "not-ours": ("2" * 32, {"format": 1}),
    }
    for name, meta in folders.values():
        (root / name).mkdir(parents=True)
        (root / name / "pixels.u8").write_bytes(b"\0" * 8214)
        (root / name / "meta.json").write_text(json.dumps(meta))
    said: list[str] = []
    pixelcache.build(images, PRE, _cfg(tmp_path), workers=1, say=said.append)
    assert not (root / folders["old"][0]).exists()
    assert all((root / folders[k][0]).is_dir() for k in ("current", "not-a-key", "not-ours"))
    assert re.fullmatch(
        rf"pixel cache: freed 0\.0\d MB in {re.escape(str(root))}: 1 unusable cache\(s\)", said[0]
    )


def test_parallel_and_serial_builds_store_the_same_pixels(images, tmp_path):
    a = pixelcache.build(images, PRE, _cfg(tmp_path / "a"), workers=1)
    b = pixelcache.build(images, PRE, _cfg(tmp_path / "b"), workers=3)
    assert np.array_equal(np.asarray(a.pixels), np.asarray(b.pixels))


def test_crop_boxes_follow_random_resized_crop_rules():
    g = torch.Generator().manual_seed(0)
    for _ in range(500):
        x1, y1, x2, y2 = crop_box(g, 64, 64, 0.25)
        w, h = x2 - x1, y2 - y1
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
        if (w, h) != (64, 64):  # not the fallback
            assert 0.25 * 64 * 64 * 0.9 <= w * h <= 64 * 64
            assert 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15


def test_train_draws_depend_only_on_seed_epoch_and_row(images, tmp_path):
    cfg = _cfg(tmp_path, hflip=True, vflip=True)
    cache = pixelcache.build(images, PRE, cfg, workers=1)
    view = CachedTrainView(cache, list(range(len(images))), cfg, seed=5, crop=32, augment=True)
    a = view.__getitems__([(0, 1), (3, 1), (5, 1)])
    b = view.__getitems__([(5, 1), (0, 1)])
    assert torch.equal(a["boxes"][0], b["boxes"][1]) and torch.equal(a["boxes"][2], b["boxes"][0])
    c = view.__getitems__([(0, 2)])
    assert not torch.equal(a["boxes"][0], c["boxes"][0])
    out = device.DeviceTransform(PRE, torch.device("cpu"))(a)
    assert out["pixel_values"].shape == (3, 3, 32, 32) and out["label"].tolist() == [0, 3, 5]
    assert math.isfinite(out["pixel_values"].abs().max().item())


def test_a_full_box_without_flip_is_the_resized_square(images, tmp_path):
    cache = pixelcache.build(images, PRE, _cfg(tmp_path), workers=1)
    batch = {
        "pixels": torch.from_numpy(np.array(cache.pixels[2:3])),
        "boxes": torch.tensor([[0.0, 0.0, 37.0, 37.0]]),
        "flips": torch.tensor([[True, False]]),
    }
    out = device.DeviceTransform(PRE, torch.device("cpu"))(batch)["pixel_values"][0]
    square = torch.from_numpy(np.array(cache.pixels[2, :, :37])).permute(2, 0, 1).float()
    expect = torch.nn.functional.interpolate(
        square[None], size=32, mode="bilinear", antialias=True
    )[0]
    mean = torch.tensor(PRE.mean).view(3, 1, 1) * 255
    std = torch.tensor(PRE.std).view(3, 1, 1) * 255
    # roi_align's 2x2 sampling is close to, not the same as, an antialiased resize
    assert (out - ((expect.flip(2) - mean) / std)).abs().mean() < 0.1


def test_auto_chooses_pil_for_policies_and_cached_otherwise(tmp_path):
    assert choose.choose(_cfg(tmp_path), 10, 37)[0] == "cached"
    mode, why = choose.choose(_cfg(tmp_path, auto_augment="trivial"), 10, 37)
    assert mode == "pil" and "auto_augment" in why
    assert (
        choose.choose(_cfg(tmp_path, auto_augment="trivial", augment=False), 10, 37)[0] == "cached"
    )
    assert choose.choose(_cfg(tmp_path, pipeline="pil"), 10, 37)[0] == "pil"
    assert choose.choose(_cfg(tmp_path, pipeline="decode"), 10, 37)[0] == "decode"
    mode, why = choose.choose(_cfg(tmp_path), 10**9, 256)  # 197 TB: no disk has room
    assert mode == "decode" and "decoded on the device" in why
    with pytest.raises(ValueError, match="random_erasing"):
        choose.choose(_cfg(tmp_path, pipeline="cached", random_erasing=0.2), 10, 37)
    with pytest.raises(ValueError, match="data.pipeline=decode: data.auto_augment=trivial"):
        choose.choose(_cfg(tmp_path, pipeline="decode", auto_augment="trivial"), 10, 37)


def test_a_cache_too_big_for_its_disk_says_how_big_and_the_two_ways_out(tmp_path, monkeypatch):
    free = 10 * 10**9
    monkeypatch.setattr(choose.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(0, 0, free))
    n, size = 200_000, 256  # 200,000 x 256 x 256 x 3 bytes = 39.3 GB
    mode, why = choose.choose(_cfg(tmp_path), n, size)
    assert mode == "decode"
    assert "39.3 GB (200,000 images x 256x256x3 bytes)" in why and "10.0 GB free" in why
    assert "data.cache_dir=DIR on a disk with 43.7 GB free" in why
    with pytest.raises(ValueError) as refused:
        choose.choose(_cfg(tmp_path, pipeline="cached"), n, size)
    message = str(refused.value)
    assert "39.3 GB" in message and "data.cache_dir=DIR" in message
    assert "data.pipeline=decode" in message


def _no_room_by_disk_usage(monkeypatch):
    monkeypatch.setattr(
        pixelcache.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(0, 0, 1000)
    )


def _no_room_by_fallocate(monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pixelcache.os, "posix_fallocate", full, raising=False)


@pytest.mark.parametrize("no_room", [_no_room_by_disk_usage, _no_room_by_fallocate])
def test_a_cache_without_room_on_its_disk_is_refused_before_any_decode(
    images, tmp_path, monkeypatch, no_room
):
    no_room(monkeypatch)
    decoded = []
    monkeypatch.setattr(pixelcache, "_fill", lambda job: decoded.append(job))
    with pytest.raises(ConfigError) as refused:
        pixelcache.build(images, PRE, _cfg(tmp_path), workers=1)
    message = str(refused.value)
    assert "needs 0.04 MB (6 images x 37x55x3 bytes), " in message  # 55: the widest window, 81 x 40
    assert "data.cache_dir=DIR" in message and "data.pipeline=decode" in message
    assert decoded == []
    assert [p for p in (tmp_path / "cache").iterdir() if p.is_dir()] == []  # no half-built cache


def test_decode_pipeline_eval_view_matches_the_pil_path_closely(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i, (w, h) in enumerate([(60, 45), (45, 80), (64, 64)]):
        smooth = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(smooth).resize((w, h), Image.BILINEAR)  # photo-like, not noise
        path = tmp_path / f"p{i}.jpg"
        img.save(path, quality=95)
        paths.append(str(path))
    png = tmp_path / "p3.png"
    Image.open(paths[0]).save(png)
    paths.append(str(png))
    files = decode.EncodedFiles(paths, PRE)
    view = decode.EncodedEvalView(files, [0, 1, 2, 3])
    batch = decode.collate_encoded([view[i] for i in range(4)])
    got = device.DeviceTransform(PRE, torch.device("cpu"))(batch)["pixel_values"]
    want = torch.stack([eval_transform(PRE)(load_rgb(p)) for p in paths])
    assert got.shape == want.shape == (4, 3, 32, 32)
    # The same JPEG decoder; the resize is torch's antialiased bilinear instead of Pillow's.
    assert (got - want).abs().mean() < 0.05
    torch.testing.assert_close(got[3], want[3], atol=1e-5, rtol=0)  # PNG: decoded by Pillow


def test_decode_pipeline_train_batches_carry_the_cached_pipelines_draws(images, tmp_path):
    cfg = _cfg(tmp_path, hflip=True)
    cache = pixelcache.build(images, PRE, cfg, workers=1)
    cached = CachedTrainView(cache, [0] * 6, cfg, seed=3, crop=32, augment=True)
    files = CachedTrainView(decode.EncodedFiles(images, PRE), [0] * 6, cfg, 3, 32, True)
    keys = [(1, 0), (4, 0)]
    a, b = cached.__getitems__(keys), files.__getitems__(keys)
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["flips"], b["flips"])
    out = device.DeviceTransform(PRE, torch.device("cpu"))(b)
    assert out["pixel_values"].shape == (2, 3, 32, 32)


def test_an_exif_rotated_jpeg_looks_the_same_to_training_validation_and_predict(tmp_path):
    from trainer.evaluation.predict import _PathDataset

    # Red grows to the right, green downwards: any wrong rotation or flip shows.
    x, y = np.meshgrid(np.linspace(0, 255, 40), np.linspace(0, 255, 20))
    stored = Image.fromarray(np.stack([x, y, np.zeros_like(x)], -1).astype(np.uint8))
    exif = stored.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = tmp_path / "exif6.jpg"
    stored.save(path, quality=100, exif=exif)
    shown = Image.open(path).transpose(Image.Transpose.ROTATE_270)  # what a viewer shows
    pre = Preprocessing(16, 18, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    want = eval_transform(pre)(shown.convert("RGB"))
    assert not torch.allclose(want, eval_transform(pre)(Image.open(path).convert("RGB")))
    predict = _PathDataset([str(path)], pre)[0]["pixel_values"]
    pil_val = pil.to_hf_dataset([(str(path), 0)], ["a"], eval_transform(pre))[0]["pixel_values"]
    cache = pixelcache.build([str(path)], pre, _cfg(tmp_path), workers=1)
    item = CachedEvalView(cache, [0], 16)[0]
    to_float = device.DeviceTransform(pre, torch.device("cpu"))
    cached_val = to_float({"pixels": item["pixels"][None]})["pixel_values"][0]
    files = decode.EncodedFiles([str(path)], pre)
    batch = decode.collate_encoded([decode.EncodedEvalView(files, [0])[0]])
    decoded_val = to_float(batch)["pixel_values"][0]
    for got in (predict, pil_val, cached_val):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (decoded_val - want).abs().mean() < 0.05  # torch's resize instead of Pillow's


def test_crop_boxes_are_random_resized_crops_of_the_whole_window():
    from torchvision.transforms import v2

    for height, width in [(37, 37), (37, 55), (55, 37), (37, 120), (90, 37)]:
        crop = v2.RandomResizedCrop(32, scale=(0.08, 1.0))
        params = getattr(crop, "make_params", None) or crop._get_params
        for seed in range(40):
            torch.manual_seed(seed)
            p = params([torch.zeros(3, height, width)])
            want = (p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"])
            assert crop_box(torch.Generator().manual_seed(seed), height, width, 0.08) == want


def test_the_cache_keeps_non_square_images_whole_up_to_3_to_2(tmp_path):
    rng = np.random.default_rng(2)
    sizes = [(60, 40), (40, 60), (37, 111)]  # w x h: 3:2, 2:3, 1:3
    paths = []
    for i, (w, h) in enumerate(sizes):
        paths.append(str(tmp_path / f"w{i}.png"))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    cache = pixelcache.build(paths, PRE, _cfg(tmp_path), workers=1)
    assert cache.pixels.shape == (3, 37, 55, 3)  # the widest window: all of 55 x 37
    assert [cache.extent(r) for r in range(3)] == [(37, 55), (55, 37), (55, 37)]
    resized = load_rgb(paths[0]).resize((55, 37), Image.BILINEAR)
    assert np.array_equal(cache.pixels[0], np.asarray(resized))  # the whole image, edges too
    resized = load_rgb(paths[1]).resize((37, 55), Image.BILINEAR)
    assert np.array_equal(cache.pixels[1], np.asarray(resized).swapaxes(0, 1))  # stored landscape


def test_a_portrait_window_is_cropped_like_the_same_image_landscape(tmp_path):
    # Already at the cache's height (37): no resize, whose rounding would differ when transposed
    wide = np.random.default_rng(3).integers(0, 256, (37, 55, 3), dtype=np.uint8)
    paths = [str(tmp_path / "wide.png"), str(tmp_path / "tall.png")]
    Image.fromarray(wide).save(paths[0])
    Image.fromarray(np.ascontiguousarray(wide.swapaxes(0, 1))).save(paths[1])
    cache = pixelcache.build(paths, PRE, _cfg(tmp_path), workers=1)
    batch = cache.gather([0, 1], None)
    batch["boxes"] = torch.tensor([[20.0, 3.0, 54.0, 30.0], [3.0, 20.0, 30.0, 54.0]])
    batch["flips"] = torch.tensor([[False, False], [False, False]])
    out = device.DeviceTransform(PRE, torch.device("cpu"))(batch)["pixel_values"]
    torch.testing.assert_close(out[1], out[0].transpose(1, 2), atol=1e-5, rtol=0)


def test_a_file_that_does_not_decode_in_the_decode_pipeline_names_itself_and_the_fix(tmp_path):
    # data.check_images=false lets such files in; Pillow's own error gave no fix
    path = tmp_path / "html.jpg"
    path.write_text("<html>not an image</html>")
    with pytest.raises(DataError, match=r"html\.jpg: unreadable image \(.*\); remove or fix it"):
        decode.EncodedFiles([str(path)], PRE).read(0)


def test_a_cache_folder_that_is_a_file_or_read_only_names_data_cache_dir(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("the user's")
    for where in ("afile", "afile/sub"):
        with pytest.raises(
            ConfigError, match=rf"folder '.*{where}' cannot be used .*data.cache_dir"
        ):
            choose.choose(DataConfig(cache_dir=str(tmp_path / where)), 10, 37)
    assert (tmp_path / "afile").read_text() == "the user's"

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(ConfigError, match="cannot be used \\(read-only file system\\)"):
        pixelcache.build([str(tmp_path / "afile")], PRE, _cfg(tmp_path), workers=1)
