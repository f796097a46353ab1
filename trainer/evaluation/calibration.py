"""How sure the model is, in numbers that mean what they say: temperature scaling.

One scalar T, fitted after training on the val split by minimizing its negative log-likelihood,
divides every logit before the softmax. It changes no top-1 answer of a single view; it makes
a "0.9" right about 9 times in 10. Stored in the model folder's config.json (calibration).
"""

from __future__ import annotations

import torch


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(N, C) class probabilities from (N, C) logits, or from (N, V, C) logits of V views of
    each image (test-time augmentation): the views' calibrated probabilities averaged."""
    p = (logits.float() / temperature).softmax(dim=-1)
    return p.mean(dim=1) if p.dim() == 3 else p
