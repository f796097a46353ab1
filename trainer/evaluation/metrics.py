"""Classification metrics from gathered predictions: accuracy, top-5, balanced accuracy, per-class
precision/recall/F1, confusion matrix, calibration (ECE).

The inputs are already gathered across processes with `gather_for_metrics`, which drops the
samples DDP repeats to even out the last batch, so every sample counts exactly once.
Undefined ratios (precision of a class never predicted, recall of a class with no samples) are
0.0, as in scikit-learn's `zero_division=0`; per-class accuracy is null where there is no sample.
"""

from __future__ import annotations

from typing import Any

import torch

ECE_BINS = 15


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den elementwise in float64, 0 where den is 0."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)


def expected_calibration_error(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS
) -> float:
    """Sum over equal-width confidence bins of |accuracy - mean confidence| x share of samples."""
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    conf = confidence.double()
    which = torch.bucketize(conf, edges[1:-1], right=True)  # bin i holds (edge_i, edge_i+1]
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            gap = correct[mask].double().mean() - conf[mask].mean()
            ece += float(gap.abs()) * int(mask.sum()) / conf.numel()
    return ece


def classification_metrics(
    topk: torch.Tensor,
    labels: torch.Tensor,
    losses: torch.Tensor,
    num_classes: int,
    confidence: torch.Tensor | None = None,
) -> dict[str, Any]:
    """topk: (N, k) predicted class indices, best first; labels: (N,); losses: (N,) per sample;
    confidence: (N,) softmax probability of the top-1 class, for calibration."""
    n = int(labels.numel())
    if n == 0:
        return {"samples": 0}
    top1 = topk[:, 0]
    confusion = torch.bincount(labels * num_classes + top1, minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes)  # rows: true class, cols: predicted
    support, predicted, tp = confusion.sum(dim=1), confusion.sum(dim=0), confusion.diag()
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = support > 0
    out: dict[str, Any] = {
        "samples": n,
        "loss": float(losses.double().mean()),
        "accuracy": float((top1 == labels).double().mean()),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[present | (predicted > 0)].mean()),
        "per_class_accuracy": [float(r) if s > 0 else None for r, s in zip(recall, support)],
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
        "confusion_matrix": confusion.tolist(),
        "confusion_matrix_normalized": _ratio(
            confusion, support[:, None].expand_as(confusion)
        ).tolist(),
    }
    if num_classes > 5 and topk.shape[1] >= 5:
        out["top5_accuracy"] = float((topk[:, :5] == labels[:, None]).any(dim=1).double().mean())
    if confidence is not None:
        out["ece"] = expected_calibration_error(confidence, top1 == labels)
    return out
