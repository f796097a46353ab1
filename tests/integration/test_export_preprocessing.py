"""`trainer export --with-preprocessing`: an ONNX model that takes a decoded image file of any
size and gives what `trainer predict` gives for that file, checked in onnxruntime on real photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import assert_ok, cli_here

# (skimage.data photo, crop (top, left, bottom, right) as fractions or None, size (w, h) or None)
PHOTOS = [
    ("astronaut", None, None),
    ("coffee", None, None),
    ("chelsea", None, None),
    ("rocket", None, None),
    ("camera", None, None),  # grayscale, written as an RGB file
    ("coins", None, (97, 77)),  # grayscale, written as a grayscale file
    ("astronaut", (0, 0.2, 1, 0.6), (150, 377)),  # portrait over 2:1
    ("coffee", (0.1, 0, 0.6, 1), (613, 201)),  # landscape 3:1
    ("chelsea", (0.2, 0.3, 0.8, 0.7), (23, 31)),  # smaller than the resize size
    ("rocket", (0, 0.4, 1, 0.6), (61, 333)),  # tall 5:1
    ("hubble_deep_field", None, (1000, 872)),
    ("immunohistochemistry", None, (35, 35)),
    ("retina", None, (777, 778)),
    ("colorwheel", None, (129, 47)),
    ("astronaut", (0.1, 0.1, 0.5, 0.9), (301, 150)),
    ("clock", None, (17, 401)),  # 1 x 24
]


def write_photos(folder: Path) -> list[Path]:
    """16 real photos (skimage.data, installed, no network) as PNG and JPEG files of 15 sizes."""
    data = pytest.importorskip("skimage.data")
    folder.mkdir(parents=True)
    paths = []
    for i, (name, box, size) in enumerate(PHOTOS):
        pixels = getattr(data, name)()
        if box:
            h, w = pixels.shape[:2]
            pixels = pixels[int(box[0] * h) : int(box[2] * h), int(box[1] * w) : int(box[3] * w)]
        image = Image.fromarray(np.ascontiguousarray(pixels))
        image = image.convert("RGB") if name == "camera" else image
        image = image.resize(size, Image.BICUBIC) if size else image
        paths.append(folder / f"{i:02d}_{name}.{'jpg' if i % 3 == 1 else 'png'}")
        image.save(paths[-1], quality=90)
    return paths


@pytest.fixture(scope="module")
def calibrated_model(trained_run, tmp_path_factory) -> Path:
    """The trained run's model folder with temperature 0.5: the ONNX must divide by it."""
    from trainer.model.folder import write_calibration

    folder = tmp_path_factory.mktemp("calibrated") / "model"
    shutil.copytree(trained_run[1] / "model", folder)
    write_calibration(folder, {"temperature": 0.5})
    return folder


def test_onnx_with_preprocessing_gives_predicts_probabilities_on_real_files(
    calibrated_model, tmp_path
):
    """The ONNX (run in onnxruntime on each decoded file) against `trainer predict`'s JSON
    probabilities for the same 16 files: max |difference| within the stated tolerance, and the
    same top-1 on every file whose predict top-two margin exceeds that tolerance (two classes
    closer than it may swap without either answer being off by more than the tolerance). The
    2-epoch model of colour blobs is undecided on photos at T=1; at T=0.5 every measured margin
    was over 0.04, so all 16 files are compared (the test asks for at least 12)."""
    ort = pytest.importorskip("onnxruntime")
    from trainer.data.transforms import load_rgb
    from trainer.model.export_preprocessing import PROBABILITY_ATOL

    files = write_photos(tmp_path / "photos")
    out = tmp_path / "onnx"
    proc = cli_here(
        "trainer", "export", str(calibrated_model), "--with-preprocessing",
        "--images", str(tmp_path / "photos"), "--out", str(out),
    )  # fmt: skip
    assert_ok(proc)
    assert "16 real image files (15 sizes): max |probability difference|" in proc.stdout
    assert_ok(
        cli_here(
            "trainer", "predict", str(calibrated_model), str(tmp_path / "photos"),
            "--topk", "3", "--out", str(tmp_path / "predict.json"),
        )
    )  # fmt: skip
    rows = {Path(r["path"]).name: r for r in json.loads((tmp_path / "predict.json").read_text())}
    names = json.loads((out / "config.json").read_text())["class_names"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    diffs, compared = [], 0
    for path in files:
        probs = session.run(None, {"image": np.asarray(load_rgb(path))[None]})[0][0]
        row = rows[path.name]
        expected = np.array([row["probabilities"][row["labels"].index(n)] for n in names])
        diffs.append(np.abs(probs - expected).max())
        top2 = np.sort(expected)[-2:]
        if top2[1] - top2[0] > PROBABILITY_ATOL:
            compared += 1
            assert names[int(probs.argmax())] == row["labels"][0], path.name
    assert max(diffs) <= PROBABILITY_ATOL and compared >= 12, (max(diffs), compared)
    result = json.loads((out / "export.json").read_text())
    assert result["input"] == {
        "name": "image",
        "shape": [1, "height", "width", 3],
        "dtype": "uint8",
    }
    assert result["output"] == {"name": "probabilities", "shape": [1, len(names)]}
    assert result["temperature"] == 0.5 and result["same_top1"]
    assert result["parity"]["atol"] == PROBABILITY_ATOL
    assert result["parity"]["max_abs_diff"] <= PROBABILITY_ATOL


def test_with_preprocessing_needs_real_images_and_onnx(calibrated_model, tmp_path):
    proc = cli_here("trainer", "export", str(calibrated_model), "--with-preprocessing")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "real image files" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = cli_here(
        "trainer", "export", str(calibrated_model), "--with-preprocessing",
        "--format", "torchscript", "--images", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 2 and "--format onnx" in proc.stderr
    assert not (calibrated_model.parent / "model-onnx-preprocessing").exists()
