"""The export with preprocessing resizes and crops exactly as `trainer predict` does: the same
pixels as eval_transform on the PIL image (Pillow's antialiased resize), in PyTorch and in the
exported ONNX graph, for images of any size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from trainer.data.transforms import Preprocessing, center_crop_offset, eval_transform
from trainer.model.export_preprocessing import (
    WithPreprocessing,
    crop_start,
    example_image,
    pillow_resize_crop,
    resized_size,
)

PRES = [
    Preprocessing(32, 36, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear"),
    Preprocessing(56, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic"),
]
# (height, width): landscape, portrait, over 2:1 tall (Pillow 13 resamples its columns first),
# over 100:1 tall (so does Pillow 12.2 and 12.3), 9:1 both ways, smaller than the crop
# (upscaled), one side already at the resize size, tiny.
SIZES = [
    (75, 120),
    (120, 75),
    (333, 61),
    (6700, 66),
    (900, 100),
    (100, 900),
    (40, 33),
    (20, 27),
    (36, 43),
    (64, 70),
    (5, 3),
]


def _image(height: int, width: int, seed: int) -> np.ndarray:
    """Noise over a gradient: every rounding case of the resize shows up."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width)[None, :, None] + np.linspace(0, 55, height)[:, None, None]
    noise = rng.normal(0, 40, (height, width, 3))
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("pre", PRES, ids=lambda p: p.interpolation)
def test_model_input_equals_eval_transform_of_the_pil_image(pre):
    module = WithPreprocessing(nn.Identity(), pre, 1.0)
    for seed, (h, w) in enumerate(SIZES):
        image = _image(h, w, seed)
        expected = eval_transform(pre)(Image.fromarray(image))
        got = module.pixel_values(torch.from_numpy(image)[None])[0]
        assert torch.equal(got, expected), (h, w)


@pytest.mark.parametrize("pre", PRES, ids=lambda p: p.interpolation)
def test_exported_graph_resizes_each_size_as_pillow(pre, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from trainer.model.export import _export_onnx

    class Pixels(nn.Module):
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return pillow_resize_crop(image[0], pre)

    path = tmp_path / "pixels.onnx"
    _export_onnx(
        Pixels(), example_image(pre), path, ("image", "pixels"), {"image": {1: "h", 2: "w"}}
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed, (h, w) in enumerate(SIZES):
        image = _image(h, w, seed)
        how = InterpolationMode(pre.interpolation)
        pil = TF.resize(Image.fromarray(image), pre.resize_size, interpolation=how)
        expected = np.asarray(TF.center_crop(pil, pre.image_size)).transpose(2, 0, 1)
        got = session.run(None, {"image": image[None]})[0]
        assert np.array_equal(got, expected), (h, w)


def test_resized_size_and_crop_start_follow_torchvision():
    for h in range(1, 90, 7):
        for w in range(1, 90, 5):
            new_h, new_w = resized_size(torch.tensor([h]), torch.tensor([w]), 36)
            size = TF.resize(torch.zeros(1, h, w, dtype=torch.uint8), 36).shape[1:]
            assert (int(new_h), int(new_w)) == tuple(size), (h, w)
    for length in range(32, 80):
        assert int(crop_start(torch.tensor([length]), 32)) == center_crop_offset(length, 32)
