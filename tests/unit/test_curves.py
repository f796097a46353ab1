import numpy as np
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from trainer.evaluation import curves


def _random_predictions(n=120, classes=4, seed=0, absent=None):
    """Random probabilities that lean towards the true class; class `absent` has no image."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    if absent is not None:
        labels[labels == absent] = (absent + 1) % classes
    logits = torch.randn(n, classes, generator=g) + 1.5 * torch.nn.functional.one_hot(
        labels, classes
    )
    return logits.softmax(dim=1), labels


@pytest.mark.parametrize("classes, absent", [(4, 2), (2, None), (7, None)])
def test_aucs_equal_scikit_learns(classes, absent):
    probs, labels = _random_predictions(classes=classes, absent=absent)
    out = curves.roc_pr(probs, labels, [f"c{i}" for i in range(classes)])
    p, y = probs.double().numpy(), labels.numpy()
    defined = []
    for c, row in enumerate(out["per_class"]):
        assert row["positives"] == int((y == c).sum())
        if c == absent:  # no positive in the split: undefined, not 0 or 0.5
            assert row["roc_auc"] is None and row["pr_auc"] is None
            continue
        assert row["roc_auc"] == pytest.approx(roc_auc_score(y == c, p[:, c]), abs=1e-9)
        assert row["pr_auc"] == pytest.approx(average_precision_score(y == c, p[:, c]), abs=1e-9)
        defined.append(row)
    assert out["classes_defined"] == len(defined)
    assert out["macro_roc_auc"] == pytest.approx(np.mean([r["roc_auc"] for r in defined]))
    assert out["macro_pr_auc"] == pytest.approx(np.mean([r["pr_auc"] for r in defined]))


def test_tied_scores_and_full_curves_equal_scikit_learns():
    """Probabilities rounded to 1 decimal: many ties, which are called positive together."""
    probs, labels = _random_predictions(n=300, classes=3, seed=5)
    probs = (probs * 10).round() / 10
    p, y = probs.double().numpy(), labels.numpy()
    out = curves.roc_pr(probs, labels, ["a", "b", "c"])
    for c, row in enumerate(out["per_class"]):
        assert row["roc_auc"] == pytest.approx(roc_auc_score(y == c, p[:, c]), abs=1e-12)
        assert row["pr_auc"] == pytest.approx(average_precision_score(y == c, p[:, c]), abs=1e-12)
        curve = out["curves"][c]  # at most 11 distinct scores: no point thinned away
        want_fpr, want_tpr, _ = roc_curve(y == c, p[:, c], drop_intermediate=False)
        np.testing.assert_allclose([curve["fpr"], curve["tpr"]], [want_fpr, want_tpr], atol=1e-6)
        want_precision, want_recall, _ = precision_recall_curve(y == c, p[:, c])
        np.testing.assert_allclose(
            [curve["recall"], curve["precision"]], [want_recall, want_precision], atol=1e-6
        )


def test_a_class_that_is_every_image_has_no_auc():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    out = curves.roc_pr(probs, torch.zeros(3, dtype=torch.long), ["a", "b"])
    assert all(r["roc_auc"] is None and r["pr_auc"] is None for r in out["per_class"])
    assert out["macro_roc_auc"] is None and out["curves"] == []


def test_curves_are_kept_for_the_lowest_aucs_and_thinned():
    probs, labels = _random_predictions(n=2000, classes=14, seed=3)
    out = curves.roc_pr(probs, labels, [f"c{i}" for i in range(14)])
    lowest = sorted(out["per_class"], key=lambda r: r["roc_auc"])[: curves.CURVES_SHOWN]
    assert {c["class"] for c in out["curves"]} == {r["class"] for r in lowest}
    for c in out["curves"]:
        assert len(c["fpr"]) == len(c["tpr"]) <= curves.CURVE_POINTS
        assert len(c["recall"]) == len(c["precision"]) == curves.CURVE_POINTS  # 2000 thinned
        assert c["fpr"][0] == 0.0 and c["tpr"][-1] == 1.0 and c["recall"][0] == 1.0


def test_coverage_table_counts_match_an_independent_count():
    probs, labels = _random_predictions(n=300, classes=5, seed=4)
    out = curves.coverage(probs, labels, thresholds=(0.0, 0.3, 0.5, 0.8, 0.9999))
    top = probs.numpy().max(axis=1)  # float32, as predict compares them
    right = probs.numpy().argmax(axis=1) == labels.numpy()
    for row in out["table"]:
        answered = [i for i in range(300) if top[i] >= np.float32(row["threshold"])]
        assert row["answered"] == len(answered) and row["share"] == len(answered) / 300
        if answered:
            assert row["accuracy"] == pytest.approx(np.mean(right[answered]))
        else:
            assert row["accuracy"] is None
    assert out["table"][0]["answered"] == 300 and out["table"][-1]["accuracy"] is None
    curve = out["curve"]
    assert curve["share"][-1] == 1.0 and curve["accuracy"][-1] == pytest.approx(right.mean())
    assert curve["threshold"] == sorted(curve["threshold"], reverse=True)
    assert len(curve["share"]) <= curves.CURVE_POINTS


def test_coverage_counts_ties_at_the_threshold_as_answered():
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8]])
    out = curves.coverage(probs, torch.tensor([0, 1, 1]), thresholds=(0.9,))
    assert out["table"][0]["answered"] == 2 and out["table"][0]["accuracy"] == 0.5
    assert out["curve"]["share"] == pytest.approx([2 / 3, 1.0])  # ties answered together
    assert out["curve"]["accuracy"] == pytest.approx([0.5, 2 / 3])


def test_binary_thresholds_count_the_positive_class():
    probs, labels = _random_predictions(n=200, classes=2, seed=5)
    out = curves.binary_thresholds(probs, labels, ["straight", "tilted"])
    assert out["positive"] == "tilted" and out["positives"] == int(labels.sum())
    p1, y = probs[:, 1].numpy(), labels.numpy()
    for row in out["table"]:
        called = p1 >= np.float32(row["threshold"])
        assert row["predicted_positive"] == int(called.sum())
        assert row["precision"] == pytest.approx((y[called] == 1).mean())
        assert row["recall"] == pytest.approx(called[y == 1].mean())
    nobody = curves.binary_thresholds(torch.tensor([[0.85, 0.15]]), torch.tensor([0]), ["a", "b"])
    assert nobody["table"][0]["precision"] == 0.0 and nobody["table"][-1]["precision"] is None
    assert nobody["table"][0]["recall"] is None
