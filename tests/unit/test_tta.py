"""Test-time augmentation: the views are the crops and mirrors they claim to be, the mirrors
follow training's, and the averaged probabilities are each view's softmax averaged."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from trainer.data.transforms import Preprocessing, eval_transform
from trainer.evaluation import tta
from trainer.evaluation.predict import _PathDataset, mark_unknown, predict_paths
from trainer.model.folder import load_for_inference, write_calibration

PRE = Preprocessing(32, 40, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
# Landscape, portrait, square, smaller than the crop, odd sizes (rounding of the offsets).
SIZES = [(64, 48), (48, 64), (50, 50), (20, 30), (101, 77)]


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


@pytest.mark.parametrize("size", SIZES)
def test_center_view_is_exactly_eval_transforms_output(size):
    img = _image(*size)
    views = tta.views_transform(PRE)(img)
    assert views.shape == (len(tta.VIEWS), 3, 32, 32) and views.dtype == torch.float32
    assert torch.equal(views[tta.VIEWS.index("center")], eval_transform(PRE)(img))


@pytest.mark.parametrize("size", SIZES)
def test_corner_views_are_the_corners_of_the_resize_square(size):
    img = _image(*size)
    # Independently: Pillow's resize, the square at the center, its corner boxes.
    square = v2.CenterCrop(PRE.resize_size)(v2.Resize(PRE.resize_size, antialias=True)(img))
    far = PRE.resize_size - PRE.image_size
    normalize = v2.Compose(
        [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(PRE.mean, PRE.std)]
    )
    boxes = {"top_left": (0, 0), "top_right": (far, 0), "bottom_left": (0, far)}
    boxes["bottom_right"] = (far, far)
    views = tta.views_transform(PRE, list(boxes))(img)
    for i, (x, y) in enumerate(boxes.values()):
        want = normalize(square.crop((x, y, x + PRE.image_size, y + PRE.image_size)))
        assert torch.equal(views[i], want), list(boxes)[i]


def test_mirrored_views_are_the_center_mirrored():
    views = tta.views_transform(PRE, ["center", "horizontal_mirror", "vertical_mirror"])(
        _image(70, 45)
    )
    assert torch.equal(views[1], views[0].flip(-1))
    assert torch.equal(views[2], views[0].flip(-2))


@pytest.mark.parametrize(
    ("flips", "mirrors"),
    [
        ({"horizontal": True, "vertical": False}, ["horizontal_mirror"]),
        ({"horizontal": False, "vertical": True}, ["vertical_mirror"]),
        ({"horizontal": True, "vertical": True}, ["horizontal_mirror", "vertical_mirror"]),
        ({"horizontal": False, "vertical": False}, []),
        (None, ["horizontal_mirror"]),  # a folder saved before trained_flips: data's defaults
    ],
)
def test_views_mirror_only_the_ways_training_mirrored(flips, mirrors):
    meta = {} if flips is None else {"trained_flips": flips}
    crops = ["center", "top_left", "top_right", "bottom_left", "bottom_right"]
    assert list(tta.model_views(meta)) == crops + mirrors


def test_views_module_runs_every_view_in_one_forward():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape))
    images = torch.randn(2, 5, 3, 8, 8)
    logits = tta.Views(model)(images)
    assert calls == [(10, 3, 8, 8)] and logits.shape == (2, 5, 4)
    for v in range(5):
        assert torch.allclose(logits[:, v], model(images[:, v]), atol=1e-6)


def _hand_tta(model_dir: Path, paths: list[Path], temperature: float) -> list[list[float]]:
    """Per image: the model run on each view alone, softmax(logits / T) averaged by hand."""
    model, meta, pre = load_for_inference(model_dir)
    views = tta.model_views(meta)
    transform = tta.views_transform(pre, views)
    out = []
    with torch.no_grad():
        for path in paths:
            stack = transform(Image.open(path).convert("RGB"))
            each = [
                (model(stack[v][None]) / temperature).softmax(dim=1)[0] for v in range(len(views))
            ]
            out.append((sum(each) / len(each)).tolist())
    return out


def test_tta_probabilities_are_the_mean_of_each_views_softmax(model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    write_calibration(folder, {"temperature": 0.5})  # sharpens an untrained model's answers
    paths = [tmp_path / "img" / f"{i}.png" for i in range(4)]
    paths[0].parent.mkdir()
    for i, path in enumerate(paths):
        _image(40 + 9 * i, 60 - 5 * i, seed=i).save(path)
    rows, bad = predict_paths(folder, [str(paths[0].parent)], 2, 3, 0, tta=True)
    assert bad == [] and [r["path"] for r in rows] == [str(p) for p in paths]
    for row, want in zip(rows, _hand_tta(folder, paths, 0.5)):
        order = sorted(range(2), key=lambda c: -want[c])
        assert row["labels"] == [["a", "b"][c] for c in order]
        assert row["probabilities"] == pytest.approx([want[c] for c in order], abs=1e-6)


def test_an_unreadable_file_yields_zero_views_and_is_reported(model_dir, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    views = tta.model_views({})
    item = _PathDataset([str(broken)], PRE, views)[0]
    assert item["ok"] == 0 and torch.equal(item["pixel_values"], torch.zeros(len(views), 3, 32, 32))
    _image(50, 40).save(tmp_path / "good.png")
    rows, bad = predict_paths(model_dir, [str(tmp_path)], 1, 4, 0, tta=True)
    assert [r["path"] for r in rows] == [str(tmp_path / "good.png")]
    assert [p for p, _ in bad] == [str(broken)]


def test_mark_unknown_relabels_below_the_threshold_and_keeps_the_rest():
    rows = [
        {"path": "x", "labels": ["a", "b"], "probabilities": [0.6, 0.4]},
        {"path": "y", "labels": ["b", "a"], "probabilities": [0.8, 0.2]},
    ]
    mark_unknown(rows, 0.7, "unsure")
    assert rows == [
        {"path": "x", "labels": ["unsure", "b"], "probabilities": [0.6, 0.4]},
        {"path": "y", "labels": ["b", "a"], "probabilities": [0.8, 0.2]},
    ]
