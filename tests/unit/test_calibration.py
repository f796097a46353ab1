import math

import pytest
import torch

from trainer.evaluation import calibration
from trainer.evaluation.metrics import ECE_BINS, expected_calibration_error
from trainer.model.folder import TEMPERATURES


def _classifier_logits(n=3000, classes=5, seed=0):
    """Logits of a decent classifier (about 80% right) whose softmax is roughly calibrated."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g) + 2.5 * torch.nn.functional.one_hot(labels)
    return logits, labels


def _ece(logits, labels, t):
    confidence, top1 = calibration.probabilities(logits, t).max(dim=1)
    return expected_calibration_error(confidence, top1 == labels)


@pytest.mark.parametrize("scale, side", [(5.0, "over"), (0.2, "under")])
def test_fitted_temperature_undoes_over_and_underconfidence(scale, side):
    logits, labels = _classifier_logits()
    fitted = calibration.fit_temperature(logits * scale, labels)
    assert fitted > 1 if side == "over" else fitted < 1
    s = calibration.summary(logits * scale, labels, fitted)
    assert s["nll_after"] < s["nll_before"] and s["ece_after"] < s["ece_before"]
    assert s["ece_after"] < 0.03 < s["ece_before"]
    # scaling the logits by `scale` is undone by a temperature near scale x the base one
    base = calibration.fit_temperature(logits, labels)
    assert fitted == pytest.approx(scale * base, rel=1e-3)


def test_fitted_temperature_is_the_minimum_and_deterministic():
    logits, labels = _classifier_logits(seed=1)
    t = calibration.fit_temperature(logits * 3, labels)
    assert t == calibration.fit_temperature(logits * 3, labels)
    best = calibration.nll(logits * 3, labels, t)
    assert best <= calibration.nll(logits * 3, labels, t * 1.01)
    assert best <= calibration.nll(logits * 3, labels, t / 1.01)


def test_fitted_temperature_stays_within_what_a_model_folder_accepts():
    labels = torch.arange(6) % 3
    perfect = 20.0 * torch.nn.functional.one_hot(labels, 3).float()  # NLL falls as T -> 0
    assert TEMPERATURES[0] <= calibration.fit_temperature(perfect, labels) <= TEMPERATURES[1]
    assert calibration.fit_temperature(perfect, -perfect.argmax(1) + 2) <= TEMPERATURES[1]
    assert calibration.fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 1.0


def test_a_split_without_a_single_mistake_keeps_the_raw_softmax():
    """Every image right: the NLL falls without limit as T -> 0, so nothing is fitted (T 1),
    for single views and for TTA's views alike; one mistake makes T fittable again."""
    labels = torch.arange(40) % 2
    logits = 2.0 * torch.nn.functional.one_hot(labels, 2).float() + 0.1 * torch.randn(40, 2)
    assert calibration.all_right(logits, labels)
    assert calibration.fit_temperature(logits, labels) == 1.0
    views = torch.stack([logits, logits * 0.5], dim=1)
    assert calibration.fit_temperature(views, labels) == 1.0
    wrong = labels.clone()
    wrong[0] = 1 - wrong[0]
    assert not calibration.all_right(logits, wrong)
    assert calibration.fit_temperature(logits, wrong) != 1.0


def test_views_are_averaged_after_the_softmax():
    logits, labels = _classifier_logits(n=400)
    g = torch.Generator().manual_seed(2)
    views = torch.stack([logits, logits + torch.randn(logits.shape, generator=g)], dim=1) * 4
    t = 1.7
    by_hand = (views.double() / t).softmax(-1).mean(1)[torch.arange(400), labels].log().mean()
    assert calibration.nll(views, labels, t) == pytest.approx(-float(by_hand), abs=1e-12)
    fitted = calibration.fit_temperature(views, labels)
    assert calibration.nll(views, labels, fitted) < calibration.nll(views, labels, 1.0)
    assert calibration.summary(views, labels, fitted)["ece_after"] == _ece(views, labels, fitted)


def test_summary_before_is_the_raw_softmax_and_after_the_temperature():
    logits, labels = _classifier_logits(n=500)
    s = calibration.summary(logits * 4, labels, 2.5)
    assert list(s) == [
        "temperature",
        "nll_before",
        "nll_after",
        "ece_before",
        "ece_after",
        "reliability",
    ]
    assert s["temperature"] == 2.5
    assert s["nll_before"] == calibration.nll(logits * 4, labels, 1.0)
    assert s["nll_after"] == calibration.nll(logits * 4, labels, 2.5)
    assert s["ece_before"] == _ece(logits * 4, labels, 1.0)
    assert s["ece_after"] == _ece(logits * 4, labels, 2.5)
    same = calibration.summary(logits, labels, 1.0)
    assert (
        same["nll_before"] == same["nll_after"]
        and same["reliability"]["before"] == same["reliability"]["after"]
    )


def test_reliability_bins_add_up_to_the_expected_calibration_error():
    logits, labels = _classifier_logits(n=300)
    for when, t in (("before", 1.0), ("after", 0.5)):
        bins = calibration.summary(logits, labels, 0.5)["reliability"][when]
        assert len(bins) == ECE_BINS and sum(b["samples"] for b in bins) == 300
        assert [b["lower"] for b in bins] == pytest.approx([i / ECE_BINS for i in range(ECE_BINS)])
        assert bins[-1]["upper"] == 1.0
        gaps = sum(
            abs(b["accuracy"] - b["confidence"]) * b["samples"] / 300 for b in bins if b["samples"]
        )
        assert gaps == pytest.approx(_ece(logits, labels, t), abs=1e-12)
        empty = [b for b in bins if b["samples"] == 0]
        assert empty and all(b["confidence"] is None and b["accuracy"] is None for b in empty)
        for b in bins:  # each image's confidence lies in its bin: (lower, upper]
            if b["samples"]:
                assert b["lower"] <= b["confidence"] <= b["upper"]


def test_nll_is_cross_entropy_at_temperature_one():
    logits, labels = _classifier_logits(n=200)
    expected = torch.nn.functional.cross_entropy(logits.double(), labels)
    assert calibration.nll(logits, labels, 1.0) == pytest.approx(float(expected), abs=1e-12)
    assert not math.isnan(calibration.nll(logits * 100, labels, 1.0))
