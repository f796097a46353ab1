import warnings

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_folder
from trainer.config import DataConfig
from trainer.data.pipelines.pil import to_hf_dataset
from trainer.data.splits import scan
from trainer.data.transforms import IMAGENET, train_transform
from trainer.evaluation import plots


def _png(path, size):
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == size


EPOCHS = [
    {
        "epoch": 1,
        "phase": "head",
        "train_loss": 1.2,
        "val_loss": 1.0,
        "train_accuracy": 0.5,
        "val_accuracy": 0.6,
    },
    {
        "epoch": 2,
        "phase": "head",
        "train_loss": 0.8,
        "val_loss": 0.7,
        "train_accuracy": 0.7,
        "val_accuracy": 0.7,
    },
    {
        "epoch": 3,
        "phase": "finetune",
        "train_loss": 0.5,
        "val_loss": 0.6,
        "train_accuracy": 0.8,
        "val_accuracy": 0.8,
    },
]


def test_learning_curves_png(tmp_path):
    _png(plots.learning_curves(EPOCHS, tmp_path / "curves.png"), (1200, 450))


def test_confusion_matrix_png_grows_with_classes(tmp_path):
    _png(plots.confusion_matrix([[3, 1], [0, 4]], ["a", "b"], tmp_path / "cm2.png"), (600, 600))
    big = np.eye(20, dtype=int) * 5
    _png(
        plots.confusion_matrix(big, [f"class {i}" for i in range(20)], tmp_path / "cm20.png"),
        (1200, 1200),
    )


def test_cjk_class_names_render_without_missing_glyphs(tmp_path):
    names = ["角度正", "角度不正", "tomato"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = plots.confusion_matrix([[2, 0, 0], [1, 3, 0], [0, 0, 1]], names, tmp_path / "cm.png")
    assert not [w for w in caught if "missing from" in str(w.message) or "Glyph" in str(w.message)]
    _png(out, (600, 600))
    drawn, font, note = plots.display_names(names)
    if plots.font_for(names) is None:  # no CJK font installed: shown by index, and said so
        assert drawn == ["#0", "#1", "tomato"] and "index" in note
    else:
        assert drawn == names and note == ""


def test_training_samples_and_mistakes_grids(tmp_path):
    root = make_folder(tmp_path / "d", ["a", "b"], 10)
    index = scan(DataConfig(root=str(root), split=[1.0, 0.0, 0.0]))
    pre = IMAGENET.with_size(32)
    ds = to_hf_dataset(index.splits["train"], index.class_names, train_transform(pre, DataConfig()))
    _png(plots.training_samples(ds, index.class_names, pre, tmp_path / "samples.png"), (1040, 1200))
    mistakes = [{"path": index.splits["train"][0][0], "true": 0, "predicted": 1, "confidence": 0.9}]
    _png(plots.mistakes_gallery(mistakes, index.class_names, tmp_path / "mistakes.png"), (260, 330))
    _png(plots.mistakes_gallery([], index.class_names, tmp_path / "none.png"), (260, 330))


def test_denormalize_inverts_normalization():
    import torch

    pre = IMAGENET
    img = torch.full((3, 2, 2), 0.5)
    normalized = (img - torch.tensor(pre.mean)[:, None, None]) / torch.tensor(pre.std)[
        :, None, None
    ]
    assert plots.denormalize(normalized, pre)[0, 0].tolist() == pytest.approx(
        [128, 128, 128], abs=1
    )


def _decisions(classes, n=200, seed=0):
    import torch

    from trainer.evaluation.report import decisions

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = 3 * (torch.randn(n, classes, generator=g) + 2 * torch.eye(classes)[labels])
    return decisions(logits, labels, [f"class {i}" for i in range(classes)], 2.0)


def test_decision_plots_png(tmp_path):
    from trainer.evaluation import decision_plots

    d = _decisions(3)
    _png(decision_plots.reliability(d["calibration"], tmp_path / "rel.png"), (1200, 500))
    _png(decision_plots.roc_pr(d["roc_pr"], tmp_path / "roc.png"), (1200, 550))
    _png(decision_plots.coverage(d["coverage"], tmp_path / "cov.png"), (700, 500))


def test_roc_pr_plot_of_many_classes_draws_the_lowest_aucs(tmp_path):
    from trainer.evaluation import curves, decision_plots

    d = _decisions(25, n=500)
    assert len(d["roc_pr"]["curves"]) == curves.CURVES_SHOWN
    _png(decision_plots.roc_pr(d["roc_pr"], tmp_path / "roc.png"), (1200, 550))
