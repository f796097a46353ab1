"""How sure the model is, in numbers that mean what they say: temperature scaling.

One scalar T, fitted after training on the val split by minimizing its negative log-likelihood,
divides every logit before the softmax. It changes no top-1 answer of a single view; it makes
a "0.9" right about 9 times in 10. Stored in the model folder's config.json (calibration).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from trainer.evaluation.metrics import ECE_BINS, expected_calibration_error
from trainer.model.folder import TEMPERATURES


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(N, C) class probabilities from (N, C) logits, or from (N, V, C) logits of V views of
    each image (test-time augmentation): the views' calibrated probabilities averaged."""
    p = (logits.float() / temperature).softmax(dim=-1)
    return p.mean(dim=1) if p.dim() == 3 else p


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of the labels under `probabilities(logits, temperature)`,
    in float64 (log of the views' mean probability taken as a logsumexp, so no underflow)."""
    log_p = (logits.double() / temperature).log_softmax(dim=-1)
    if log_p.dim() == 3:  # log mean_v p_v = logsumexp_v log p_v - log V
        log_p = log_p.logsumexp(dim=1) - math.log(log_p.shape[1])
    return float(-log_p.gather(1, labels.long()[:, None]).mean())


def all_right(logits: torch.Tensor, labels: torch.Tensor) -> bool:
    """Is every image's top-1 right (every view's, for (N, V, C) logits)? Then the NLL falls
    without limit as T -> 0: the split says nothing about how sure the model should be."""
    labels = labels.to(logits.device)
    return bool((logits.argmax(-1) == (labels if logits.dim() == 2 else labels[:, None])).all())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T within model.folder.TEMPERATURES that minimizes `nll(logits, labels, T)`; 1.0
    without images or when every image is right (all_right: sharpening without limit would
    make every later mistake infinitely sure: measured on a 40-image val split, T 0.04 and a
    test NLL of 3.66 instead of 0.15).

    For (N, C) logits the NLL is convex in 1/T, so unimodal in log T: a golden-section search
    on log T (deterministic) finds its minimum; the bounds themselves are candidates too."""
    if labels.numel() == 0 or all_right(logits, labels):
        return 1.0
    logits = logits.detach().cpu().double()
    labels = labels.detach().cpu()
    low, high = (math.log(t) for t in TEMPERATURES)
    log_t = _golden_section(lambda log_t: nll(logits, labels, math.exp(log_t)), low, high)
    inside = min(max(math.exp(log_t), TEMPERATURES[0]), TEMPERATURES[1])  # exp(log) rounds
    candidates = [inside, *TEMPERATURES]
    return min(candidates, key=lambda t: nll(logits, labels, t))


def _golden_section(f: Callable[[float], float], low: float, high: float, tol: float = 1e-6):
    """The minimum of a unimodal f on [low, high] to within tol (scipy's bounded search did
    the same, at 0.5 s of import in every run)."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return (a + b) / 2


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor) -> list[dict[str, Any]]:
    """The ECE_BINS equal-width confidence bins of metrics.expected_calibration_error (bin i
    holds (lower, upper]; the first also 0): samples, mean confidence and accuracy in each.
    Empty bins are kept, with samples 0 and null confidence/accuracy."""
    edges = torch.linspace(0, 1, ECE_BINS + 1, dtype=torch.float64)
    conf = confidence.double()
    which = torch.bucketize(conf, edges[1:-1], right=True)
    bins = []
    for b in range(ECE_BINS):
        mask = which == b
        n = int(mask.sum())
        bins.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "samples": n,
                "confidence": float(conf[mask].mean()) if n else None,
                "accuracy": float(correct[mask].double().mean()) if n else None,
            }
        )
    return bins


def _at(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict[str, Any]:
    confidence, top1 = probabilities(logits, temperature).max(dim=1)
    correct = top1 == labels
    return {
        "nll": nll(logits, labels, temperature),
        "ece": expected_calibration_error(confidence, correct),
        "bins": reliability_bins(confidence, correct),
    }


def summary(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict[str, Any]:
    """NLL, ECE and the reliability bins before (T = 1) and after (T = `temperature`)."""
    before, after = _at(logits, labels, 1.0), _at(logits, labels, float(temperature))
    return {
        "temperature": float(temperature),
        "nll_before": before["nll"],
        "nll_after": after["nll"],
        "ece_before": before["ece"],
        "ece_after": after["ece"],
        "reliability": {"before": before["bins"], "after": after["bins"]},
    }
