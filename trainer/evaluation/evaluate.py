"""The one forward-and-gather pass: val, test, `trainer eval` and `predict`'s metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from trainer import runtime
from trainer.data.loaders import nhwc
from trainer.evaluation import calibration, metrics


@torch.no_grad()
def forward_gather(
    model,
    loader,
    accelerator: Accelerator,
    outputs: Callable[[torch.Tensor, dict], tuple[torch.Tensor, ...]],
    desc: str = "eval",
    channels_last: bool = False,
    transform=None,
) -> Iterator[tuple[tuple[torch.Tensor, ...], dict]]:
    """Per batch: `outputs(float32 logits, batch)` gathered from every process, each sample
    once, and the batch as this process saw it."""
    model.eval()
    for batch in runtime.progress(loader, desc, accelerator):
        if transform is not None:  # uint8 cache batches -> normalized images (on the device)
            batch = transform(batch)
        with accelerator.autocast():  # also for models not prepared by accelerate (the EMA copy)
            logits = model(nhwc(batch["pixel_values"], channels_last)).float()
        # gather_for_metrics drops the duplicates DDP adds to even out the last batch.
        yield accelerator.gather_for_metrics(outputs(logits, batch)), batch


@torch.no_grad()
def evaluate(
    model,
    loader,
    accelerator: Accelerator,
    num_classes: int,
    desc: str = "eval",
    channels_last: bool = False,
    transform=None,
    temperature: float = 1.0,
    keep_logits: bool = False,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Metrics over `loader`, each sample once, and the gathered per-sample predictions
    (topk, label, loss, confidence, index; with `keep_logits` also the float32 logits) for
    reports and galleries.

    Loss, confidence and calibration error are those of the probabilities softmax(logits / T)
    (`temperature` T: the model folder's calibration); a model returning (B, V, C) logits of V
    views per image (test-time augmentation) is scored on its views' averaged probabilities."""
    k = min(5, num_classes)

    def per_sample(logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, ...]:
        label = batch["label"]
        if temperature == 1.0 and logits.dim() == 2:  # the raw softmax, as training's val sees it
            loss = F.cross_entropy(logits, label, reduction="none")
            confidence = logits.softmax(dim=1).max(dim=1).values
            top = logits.topk(k, dim=1).indices
        else:
            p = calibration.probabilities(logits, temperature)
            loss = F.nll_loss(p.clamp_min(torch.finfo(p.dtype).tiny).log(), label, reduction="none")
            confidence, top = p.max(dim=1).values, p.topk(k, dim=1).indices
        kept = (logits,) if keep_logits else ()
        return top, label, loss, confidence, batch["index"], *kept

    keys = ("topk", "label", "loss", "confidence", "index") + (("logits",) if keep_logits else ())
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
    batches = forward_gather(model, loader, accelerator, per_sample, desc, channels_last, transform)
    for gathered, _ in batches:
        for key, tensor in zip(keys, gathered):
            parts[key].append(tensor.cpu())
    if not parts["label"]:
        return {"samples": 0}, {}
    preds = {key: torch.cat(values) for key, values in parts.items()}
    result = metrics.classification_metrics(
        preds["topk"], preds["label"], preds["loss"], num_classes, confidence=preds["confidence"]
    )
    return result, preds


def summary_of(result: dict, prefix: str) -> dict:
    keys = ("loss", "accuracy", "top5_accuracy", "balanced_accuracy", "macro_f1", "ece", "samples")
    return {f"{prefix}_{k}": result[k] for k in keys if k in result}
