"""What `trainer predict` and `eval` decide with a trained model folder: calibrated probabilities
(or raw with --no-calibration), "unknown" below --min-confidence, test-time augmentation.

predict runs in-process through `cli.main` (seconds, not a fresh torch import each); eval --tta
--report runs as a user runs it, in a subprocess.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import assert_ok, cli_here
from trainer.cli import main
from trainer.data.transforms import eval_transform
from trainer.evaluation import tta
from trainer.model.folder import load_for_inference, write_calibration

pytestmark = pytest.mark.integration

TEMPERATURE = 2.5  # far enough from 1 that every probability moves


@pytest.fixture
def calibrated(trained_run, tmp_path) -> tuple[Path, Path]:
    """(4 images of each class, a copy of the trained model folder whose config.json holds
    TEMPERATURE)."""
    root, run = trained_run
    images = tmp_path / "images"
    for folder in sorted(root.iterdir()):
        (images / folder.name).mkdir(parents=True)
        for path in sorted(folder.iterdir())[:4]:
            shutil.copy(path, images / folder.name / path.name)
    model = tmp_path / "model"
    shutil.copytree(run / "model", model)  # the fixture's folder is shared: never write into it
    write_calibration(model, {"temperature": TEMPERATURE})
    return images, model


def _hand_logits(model_dir: Path, paths: list[Path], views: bool = False) -> torch.Tensor:
    """The model run by hand on each image ((N, C)), or on each TTA view as an image of its own
    ((N, V, C))."""
    model, meta, pre = load_for_inference(model_dir)
    transform = tta.views_transform(pre, tta.model_views(meta)) if views else eval_transform(pre)
    x = torch.stack([transform(Image.open(path).convert("RGB")) for path in paths])
    with torch.no_grad():
        if not views:
            return model(x)
        return torch.stack([model(x[:, v]) for v in range(x.shape[1])], dim=1)


def _images(root: Path) -> list[Path]:
    return sorted(root.rglob("*.png"), key=str)


def _predict(model: Path, root: Path, out: Path, *flags: str) -> int:
    return main(["predict", str(model), str(root), "--out", str(out), "--num-workers", "0", *flags])


def _predict_json(model: Path, root: Path, out: Path, *flags: str) -> list[dict]:
    assert _predict(model, root, out, *flags) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def test_predict_probabilities_are_softmax_of_logits_over_the_temperature(calibrated, tmp_path):
    root, model = calibrated
    paths = _images(root)
    logits = _hand_logits(model, paths)
    names = json.loads((model / "config.json").read_text())["class_names"]
    for flags, t in (((), TEMPERATURE), (("--no-calibration",), 1.0)):
        rows = _predict_json(model, root, tmp_path / "p.json", "--topk", "3", *flags)
        assert [r["path"] for r in rows] == [str(p) for p in paths]
        probs = (logits / t).softmax(dim=1)
        for row, p in zip(rows, probs):
            top = p.argsort(descending=True).tolist()
            assert row["labels"] == [names[c] for c in top], flags
            assert row["probabilities"] == pytest.approx(p[top].tolist(), abs=1e-6), flags


def test_min_confidence_writes_unknown_for_exactly_the_images_below_it(
    calibrated, tmp_path, capsys
):
    root, model = calibrated
    top = (_hand_logits(model, _images(root)) / TEMPERATURE).softmax(dim=1).max(dim=1).values
    # Halfway across the widest gap between the middle images' probabilities: no row's
    # probability is near P, so neither rounding nor float32 decides a row.
    s = top.sort().values.tolist()
    gap, k = max((s[k] - s[k - 1], k) for k in range(len(s) // 4, 3 * len(s) // 4 + 1))
    assert gap > 1e-4
    p = (s[k - 1] + s[k]) / 2
    below = int((top < p).sum())
    assert below == k
    out = tmp_path / "p.csv"
    assert _predict(model, root, out, "--topk", "2", "--min-confidence", str(p)) == 0
    with open(out, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sum(r["label"] == "unknown" for r in rows) == below
    for r, want in zip(rows, top.tolist()):
        assert float(r["probability"]) == pytest.approx(want, abs=1e-6)  # kept, not blanked
        assert (r["label"] == "unknown") == (want < p)
        assert r["label_2"] in {"cat", "dog", "fox"}
    assert f"{below} below --min-confidence {p:g} written as 'unknown'" in capsys.readouterr().out
    rows = _predict_json(model, root, tmp_path / "p.json", "--min-confidence", str(p))
    assert sum(r["labels"] == ["unknown"] for r in rows) == below


def test_an_unknown_label_that_is_a_class_exits_2_in_one_line(calibrated, tmp_path, capsys):
    root, model = calibrated
    out = tmp_path / "p.csv"
    for flags, names in (
        (("--min-confidence", "0.5", "--unknown-label", "dog"), "--unknown-label 'dog'"),
        (("--min-confidence", "1.5"), "--min-confidence"),
    ):
        assert _predict(model, root, out, *flags) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error:" in line]
        assert "Traceback" not in err and len(errors) == 1 and names in errors[0], err
        assert not out.exists()


def test_eval_with_tta_scores_the_averaged_views_and_writes_the_report(calibrated, tmp_path):
    root, model = calibrated
    report, metrics = tmp_path / "report", tmp_path / "eval.json"
    proc = cli_here(
        "trainer", "eval", str(model), str(root), "--tta", "--report", str(report),
        "--json", str(metrics),
    )  # fmt: skip
    assert_ok(proc)
    views = list(tta.model_views(json.loads((model / "config.json").read_text())))
    assert f"test-time augmentation: {len(views)} views averaged" in proc.stdout
    result = json.loads(metrics.read_text())
    assert result["tta_views"] == views and result["temperature"] == TEMPERATURE
    # The loss by hand: each view's softmax(logits / T), averaged, its NLL of the true class.
    paths = _images(root)
    probs = (_hand_logits(model, paths, views=True) / TEMPERATURE).softmax(dim=-1).mean(dim=1)
    labels = torch.tensor([result["class_names"].index(p.parent.name) for p in paths])
    nll = -probs[torch.arange(len(paths)), labels].log().mean()
    assert result["loss"] == pytest.approx(float(nll), abs=1e-5)
    assert math.isclose(result["accuracy"], float((probs.argmax(1) == labels).float().mean()))
    written = json.loads((report / "report.json").read_text())
    assert written["calibration"]["temperature"] == TEMPERATURE
    assert written["tta_views"] == views
    for plot in ("confusion_matrix", "reliability", "roc_pr", "coverage"):
        assert (report / "plots" / f"{plot}.png").is_file(), plot
