"""Where to set a threshold: per-class ROC and precision-recall, coverage vs accuracy, and for
two classes precision and recall of the positive class at fixed thresholds.

Inputs are (N, C) probabilities (calibration.probabilities: the ones `trainer predict` writes)
and (N,) true labels. AUCs are computed on all images, as scikit-learn's roc_auc_score and
average_precision_score define them (numpy here: importing scikit-learn cost every run 2 s); the
curves kept for the plots are thinned to at most CURVE_POINTS points each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

# Top-probability thresholds of the coverage table (`trainer predict --min-confidence P`).
COVERAGE_THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
# Positive-class thresholds of the two-class table.
BINARY_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
CURVES_SHOWN = 10  # classes with curves in report.json and the plot: the lowest ROC-AUCs
CURVE_POINTS = 200


def _thin(*columns: np.ndarray) -> list[list[float]]:
    """At most CURVE_POINTS points, evenly spaced along the curve, first and last kept."""
    n = len(columns[0])
    keep = np.unique(np.linspace(0, n - 1, min(n, CURVE_POINTS)).round().astype(int))
    return [np.round(c[keep].astype(np.float64), 6).tolist() for c in columns]


def _mean(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _counts(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives when calling positive every image scoring >= t, for each
    distinct score t from the highest down (tied scores are called together)."""
    order = np.argsort(-score, kind="stable")
    score, positive = score[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]
    tps = np.cumsum(positive)[last_of_tie]
    return tps, last_of_tie + 1 - tps


def _roc(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(false positive rates, true positive rates) from (0, 0) to (1, 1), and the area under."""
    tps, fps = _counts(positive, score)
    fpr, tpr = np.r_[0, fps] / fps[-1], np.r_[0, tps] / tps[-1]
    return fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def _pr(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(recalls from 1 down to 0, their precisions) and the average precision: the precision at
    each threshold weighted by the recall it adds (no interpolation)."""
    tps, fps = _counts(positive, score)
    precision, recall = tps / (tps + fps), tps / tps[-1]
    average = float(np.sum(np.diff(np.r_[0, recall]) * precision))
    return np.r_[recall[::-1], 0], np.r_[precision[::-1], 1], average


def roc_pr(probs: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """One-vs-rest ROC-AUC and PR-AUC (average precision) per class, null where the split has
    no positive or no negative of the class; macro means over the defined ones; the curves of
    the (at most CURVES_SHOWN) classes of lowest ROC-AUC."""
    p, y = probs.double().cpu().numpy(), labels.cpu().numpy()
    per_class, curves = [], []
    for c, name in enumerate(class_names):
        positive = y == c
        defined = 0 < positive.sum() < len(y)
        per_class.append(
            {
                "class": name,
                "positives": int(positive.sum()),
                "roc_auc": _roc(positive, p[:, c])[2] if defined else None,
                "pr_auc": _pr(positive, p[:, c])[2] if defined else None,
            }
        )
    ranked = sorted(
        (c for c, row in enumerate(per_class) if row["roc_auc"] is not None),
        key=lambda c: per_class[c]["roc_auc"],
    )
    for c in sorted(ranked[:CURVES_SHOWN]):
        fpr, tpr, _ = _roc(y == c, p[:, c])
        recall, precision, _ = _pr(y == c, p[:, c])
        fpr, tpr = _thin(fpr, tpr)
        recall, precision = _thin(recall, precision)
        curves.append(
            {
                "class": class_names[c],
                "fpr": fpr,
                "tpr": tpr,
                "recall": recall,
                "precision": precision,
            }
        )
    return {
        "per_class": per_class,
        "macro_roc_auc": _mean([row["roc_auc"] for row in per_class]),
        "macro_pr_auc": _mean([row["pr_auc"] for row in per_class]),
        "classes_defined": len(ranked),
        "curves": curves,
    }


def coverage(
    probs: torch.Tensor, labels: torch.Tensor, thresholds: Sequence[float] = COVERAGE_THRESHOLDS
) -> dict[str, Any]:
    """Selective prediction: answering only images whose top probability is >= a threshold
    (compared in the probabilities' own float32, as `predict --min-confidence` does), how many
    are answered, their share and accuracy (null when none); and the whole curve."""
    confidence, top1 = probs.max(dim=1)
    correct = top1 == labels
    n = int(labels.numel())
    table = []
    for t in thresholds:
        answered = confidence >= t
        k = int(answered.sum())
        table.append(
            {
                "threshold": float(t),
                "answered": k,
                "share": k / n,
                "accuracy": float(correct[answered].double().mean()) if k else None,
            }
        )
    # The curve: answering the k most confident images, k = 1..N, at each distinct confidence.
    order = confidence.argsort(descending=True, stable=True)
    conf_sorted = confidence[order].double().numpy()
    hits = correct[order].double().cumsum(0).numpy()
    last = np.r_[conf_sorted[1:] != conf_sorted[:-1], True]  # the last image of each tie
    k = np.arange(1, n + 1)[last]
    share, accuracy, threshold = _thin(k / n, hits[last] / k, conf_sorted[last])
    return {
        "images": n,
        "table": table,
        "curve": {"share": share, "accuracy": accuracy, "threshold": threshold},
    }


def binary_thresholds(
    probs: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    thresholds: Sequence[float] = BINARY_THRESHOLDS,
) -> dict[str, Any]:
    """Two classes: calling an image class_names[1] (the positive class) when its probability
    is >= t: images called positive, precision (null when none) and recall (null without
    positives) at each t."""
    p1, positive = probs[:, 1], labels == 1
    positives = int(positive.sum())
    rows = []
    for t in thresholds:
        called = p1 >= t
        k, tp = int(called.sum()), int((called & positive).sum())
        rows.append(
            {
                "threshold": float(t),
                "predicted_positive": k,
                "precision": tp / k if k else None,
                "recall": tp / positives if positives else None,
            }
        )
    return {"positive": class_names[1], "positives": positives, "table": rows}
