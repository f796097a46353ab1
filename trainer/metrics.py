"""Classification metrics from gathered predictions: top-1, top-5, per class, confusion matrix.

The inputs are already gathered across processes with `gather_for_metrics`, which drops the
samples DDP repeats to even out the last batch, so every sample counts exactly once.
"""

from __future__ import annotations

from typing import Any

import torch


def classification_metrics(
    topk: torch.Tensor, labels: torch.Tensor, losses: torch.Tensor, num_classes: int
) -> dict[str, Any]:
    """topk: (N, k) predicted class indices, best first; labels: (N,); losses: (N,) per sample."""
    n = int(labels.numel())
    if n == 0:
        return {"samples": 0}
    top1 = topk[:, 0]
    confusion = torch.bincount(labels * num_classes + top1, minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes)  # rows: true class, cols: predicted
    support = confusion.sum(dim=1)
    correct = confusion.diag()
    per_class = [
        (int(c) / int(s)) if s > 0 else None for c, s in zip(correct.tolist(), support.tolist())
    ]
    out: dict[str, Any] = {
        "samples": n,
        "loss": float(losses.double().mean()),
        "accuracy": float((top1 == labels).double().mean()),
        "per_class_accuracy": per_class,
        "support": support.tolist(),
        "confusion_matrix": confusion.tolist(),
    }
    if num_classes > 5 and topk.shape[1] >= 5:
        out["top5_accuracy"] = float((topk[:, :5] == labels[:, None]).any(dim=1).double().mean())
    return out
