"""Temperature scaling after training: fitted on val, stored in the model folder, applied after."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from tests.conftest import assert_ok, train_smoke, write_class_images
from trainer.data.transforms import eval_transform, load_rgb
from trainer.evaluation.metrics import expected_calibration_error
from trainer.model.folder import load_for_inference, temperature

CLASSES = ["a", "b", "c"]


def _mislabelled_folder(root: Path, per_class: int = 24) -> Path:
    """Easy classes with every third image filed under the next class: a model that learns the
    classes is sure of answers that a third of the val labels call wrong: overconfident."""
    written = [
        write_class_images(root / name, c, per_class, size=32) for c, name in enumerate(CLASSES)
    ]
    for c, paths in enumerate(written):
        for path in paths[::3]:
            path.rename(root / CLASSES[(c + 1) % len(CLASSES)] / f"moved_{c}_{path.name}")
    return root


def _val_logits(run: Path, data_root: Path) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The kept model's logits on the val split, computed here from the model folder alone."""
    model, meta, pre = load_for_inference(run / "model")
    with open(run / "splits.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "val"]
    transform = eval_transform(pre)
    x = torch.stack([transform(load_rgb(data_root / r["path"])) for r in rows])
    labels = torch.tensor([CLASSES.index(r["label"]) for r in rows])
    with torch.no_grad():
        return model(x).double(), labels, temperature(meta)


def test_an_overfit_model_is_calibrated_on_val_and_keeps_its_temperature(tmp_path):
    root = _mislabelled_folder(tmp_path / "images")
    run = tmp_path / "run"
    proc = train_smoke(root, run, "train.epochs=6", "train.batch_size=8", "data.augment=false")
    assert_ok(proc)
    assert "calibration: temperature" in proc.stdout

    logits, labels, t = _val_logits(run, root)
    assert t > 1.0  # overconfident: the fitted temperature softens every answer
    # Computed here, not by the code under test: NLL and ECE on val before and after.
    nll = [float(F.cross_entropy(logits / s, labels)) for s in (1.0, t)]
    conf = [(logits / s).softmax(1).max(1).values for s in (1.0, t)]
    correct = logits.argmax(1) == labels
    ece = [expected_calibration_error(c, correct) for c in conf]
    assert nll[1] < nll[0] and ece[1] < ece[0], (nll, ece)

    # The temperature survives the round trip and is what the run reports.
    stored = json.loads((run / "model" / "config.json").read_text())["calibration"]
    assert stored["temperature"] == t and stored["fitted_on"] == "val"
    assert abs(stored["nll_before"] - nll[0]) < 1e-4 and abs(stored["nll_after"] - nll[1]) < 1e-4
    assert json.loads((run / "summary.json").read_text())["temperature"] == t
    report = json.loads((run / "report.json").read_text())
    assert report["calibration"]["temperature"] == t
