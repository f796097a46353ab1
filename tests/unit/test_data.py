from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import make_folder, make_pre_split
from trainer.config import DataConfig
from trainer.data.layout import DataError
from trainer.data.pipelines.pil import to_hf_dataset
from trainer.data.splits import (
    labelled_items,
    scan,
    stratified_split,
)
from trainer.data.transforms import IMAGENET, eval_transform, load_rgb


def _labels(items):
    return Counter(label for _, label in items)


def test_ratio_split_is_stratified_disjoint_and_complete(tmp_path):
    root = make_folder(tmp_path / "d", ["a", "b"], 20)
    make_folder(tmp_path / "d2", ["c"], 10)
    (tmp_path / "d2" / "c").rename(root / "c")
    index = scan(DataConfig(root=str(root)))
    assert index.layout == "ratio-split"
    assert index.class_names == ["a", "b", "c"]
    train, val, test = (index.splits[s] for s in ("train", "val", "test"))
    assert _labels(train) == {0: 14, 1: 14, 2: 7}
    assert _labels(val) == {0: 4, 1: 4, 2: 2}
    assert _labels(test) == {0: 2, 1: 2, 2: 1}
    paths = [p for items in (train, val, test) for p, _ in items]
    assert len(paths) == len(set(paths)) == 50


def test_ratio_split_is_reproducible_and_seeded(tmp_path):
    root = make_folder(tmp_path / "d", ["a", "b"], 30)
    first = scan(DataConfig(root=str(root), split_seed=1)).splits
    assert scan(DataConfig(root=str(root), split_seed=1)).splits == first
    assert scan(DataConfig(root=str(root), split_seed=2)).splits["test"] != first["test"]


def test_split_of_one_class_does_not_move_when_another_class_grows():
    a = [(f"a/{i}", 0) for i in range(30)]
    b = [(f"b/{i}", 1) for i in range(30)]
    more_b = b + [(f"b/x{i}", 1) for i in range(10)]
    first = stratified_split(a + b, [0.7, 0.2, 0.1], 0, ["a", "b"])
    second = stratified_split(a + more_b, [0.7, 0.2, 0.1], 0, ["a", "b"])
    for p1, p2 in zip(first, second):
        assert [x for x in p1 if x[1] == 0] == [x for x in p2 if x[1] == 0]


def test_tiny_class_keeps_a_training_image():
    parts = stratified_split([("only", 0)], [0.7, 0.2, 0.1], 0)
    assert parts[0] == [("only", 0)] and parts[1] == parts[2] == []


@pytest.mark.parametrize("val_name", ["val", "validation", "valid"])
def test_pre_split_layout_with_val_aliases(tmp_path, val_name):
    root = make_pre_split(tmp_path / "d", ["x", "y"], {"train": 6, "val": 3, "test": 2}, val_name)
    index = scan(DataConfig(root=str(root)))
    assert index.layout == "pre-split"
    assert index.counts() == {"train": 12, "val": 6, "test": 4}
    assert all(f"/{val_name}/" in p for p, _ in index.splits["val"])


def test_pre_split_without_val_holds_out_part_of_train(tmp_path):
    root = make_pre_split(tmp_path / "d", ["x", "y"], {"train": 9})
    index = scan(DataConfig(root=str(root)))
    assert set(index.splits) == {"train", "val"}
    assert index.counts()["train"] + index.counts()["val"] == 18
    assert _labels(index.splits["val"]) == {0: 2, 1: 2}  # 0.2/0.9 of 9 per class


def test_pre_split_val_class_missing_from_train_is_an_error(tmp_path):
    root = make_pre_split(tmp_path / "d", ["x", "y"], {"train": 3, "val": 2})
    make_folder(root / "val", ["x", "y", "zebra"], 1)
    with pytest.raises(DataError, match="zebra"):
        scan(DataConfig(root=str(root)))


def test_nested_root_and_utf8_class_names(tmp_path):
    outer = tmp_path / "facade-dataset"
    make_folder(outer / "角度正", ["0", "1"], 10)
    index = scan(DataConfig(root=str(outer)))
    assert index.root.name == "角度正"
    assert index.class_names == ["0", "1"]
    root = make_folder(tmp_path / "veg", ["胡萝卜", "Гриб", "tomato"], 10)
    index = scan(DataConfig(root=str(root)))
    assert index.class_names == sorted(["胡萝卜", "Гриб", "tomato"])
    ds = to_hf_dataset(
        index.splits["train"], index.class_names, eval_transform(IMAGENET.with_size(32))
    )
    assert ds.features["label"].names == index.class_names
    assert ds[0]["pixel_values"].shape == (3, 32, 32)


def test_hidden_and_non_image_files_are_not_indexed_and_empty_classes_skipped(tmp_path):
    root = make_folder(tmp_path / "d", ["a", "b"], 5)
    (root / "a" / ".DS_Store").write_bytes(b"\0\0")
    (root / "a" / "Thumbs.db").write_bytes(b"\0")
    (root / "a" / "notes.txt").write_text("x")
    (root / "a" / "._img_000.png").write_bytes(b"\0")  # macOS resource fork
    (root / "empty").mkdir()
    index = scan(DataConfig(root=str(root), split=[1.0, 0.0, 0.0]))
    assert index.class_names == ["a", "b"]
    assert index.counts() == {"train": 10}
    assert any("empty" in n for n in index.notes)


def test_one_class_is_an_error_naming_the_folder(tmp_path):
    root = make_folder(tmp_path / "d", ["a"], 5)
    (root / "b").mkdir()
    with pytest.raises(DataError, match="at least 2 class"):
        scan(DataConfig(root=str(root)))


def test_labelled_items_uses_the_model_label_map(tmp_path):
    root = make_pre_split(tmp_path / "d", ["b", "c"], {"train": 2, "test": 3})
    items = labelled_items(root, ["a", "b", "c"])
    assert _labels(items) == {1: 3, 2: 3} and all("/test/" in p for p, _ in items)
    with pytest.raises(DataError, match="unknown to the model"):
        labelled_items(root, ["b"])


# --------------------------------------------------------------------------- image modes


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_grayscale_rgba_palette_cmyk_become_rgb(tmp_path):
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    cases = {
        "gray.png": Image.new("L", (8, 8), 128),
        "rgba.png": Image.new("RGBA", (8, 8), (255, 0, 0, 255)),
        "palette.png": red.convert("P"),
        "cmyk.jpg": red.convert("CMYK"),
        "la.png": Image.new("LA", (8, 8), (100, 255)),
    }
    for name, img in cases.items():
        out = load_rgb(_save(img, tmp_path / name))
        assert out.mode == "RGB", name
    assert load_rgb(tmp_path / "gray.png").getpixel((0, 0)) == (128, 128, 128)
    r, g, b = load_rgb(tmp_path / "cmyk.jpg").getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


def test_transparent_pixels_become_white_not_black(tmp_path):
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_rgb(_save(img, tmp_path / "t.png")).getpixel((0, 0)) == (255, 255, 255)


def test_16bit_grayscale_is_scaled_not_clipped_to_white(tmp_path):
    arr = np.full((8, 8), 32768, dtype=np.uint16)  # mid grey in 16 bits
    path = _save(Image.fromarray(arr), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")
    value = load_rgb(path).getpixel((0, 0))
    assert value == (128, 128, 128)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = _save(img, tmp_path / "rot.jpg", exif=exif)
    assert load_rgb(path).size == (20, 40)


def test_hf_dataset_yields_normalized_tensors_and_labels(tmp_path):
    root = make_folder(tmp_path / "d", ["a", "b"], 3)
    index = scan(DataConfig(root=str(root), split=[1.0, 0.0, 0.0]))
    ds = to_hf_dataset(
        index.splits["train"], index.class_names, eval_transform(IMAGENET.with_size(24))
    )
    item = ds[5]
    assert (
        isinstance(item["pixel_values"], torch.Tensor)
        and item["pixel_values"].dtype == torch.float32
    )
    assert item["pixel_values"].shape == (3, 24, 24) and item["label"] == 1
    assert -3 < float(item["pixel_values"].mean()) < 3
