"""The feature cache: a frozen-backbone phase runs the backbone once and trains the head many times.

With the backbone frozen (and its BatchNorm in eval mode), the head's inputs change between
epochs only through augmentation. When nothing random happens before the head, the features of
every train and val image are computed once, in eval mode, and the phase trains the head on
them: the same batches in the same order (trainer.data.sampling), a forward through the backbone
saved per image per epoch. It wraps whichever pipeline the run uses; the features themselves
always come from the PIL eval view, the reference the other pipelines' eval views match.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainer import runtime
from trainer.config import PhaseConfig, RunConfig
from trainer.data.loaders import make_loader, nhwc, stop_workers
from trainer.data.pipelines import pil
from trainer.data.pipelines.base import Pipeline
from trainer.data.sampling import EpochBatchSampler
from trainer.data.transforms import eval_transform

STOCHASTIC = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def has_randomness(backbone: nn.Module) -> bool:
    """Dropout or stochastic depth in the backbone: its training-mode output is random."""
    for m in backbone.modules():
        if isinstance(m, STOCHASTIC) and m.p > 0:
            return True
        if type(m).__name__ in ("StochasticDepth", "DropPath") and getattr(
            m, "p", getattr(m, "drop_prob", 0)
        ):
            return True
    return False


def wanted(cfg: RunConfig, phase: PhaseConfig, backbone: nn.Module) -> tuple[bool, str]:
    """Whether this phase trains on cached features, and why (for the log)."""
    choice = cfg.train.feature_cache
    if phase.freeze != "backbone" or choice is False:
        return False, ""
    if choice is True:
        return True, "train.feature_cache=true (features of the un-augmented eval view)"
    reasons = []
    if phase.augment:
        reasons.append(f"augment=true in phase '{phase.name}'")
    elif phase.augment is None and cfg.data.augment:
        reasons.append("data.augment=true")
    if cfg.train.mixup_alpha or cfg.train.cutmix_alpha:
        reasons.append("MixUp/CutMix")
    if not cfg.train.freeze_bn:
        reasons.append("train.freeze_bn=false")
    if has_randomness(backbone):
        reasons.append("dropout in the backbone")
    if reasons:
        return False, f"features not cached ({', '.join(reasons)} change them every epoch)"
    return True, "the head's inputs are the same every epoch"


@torch.no_grad()
def extract(backbone: nn.Module, loader: DataLoader, accelerator, num_rows: int, desc: str):
    """(features [num_rows, D] float32, labels [num_rows]) on this process's device, for every
    row of the dataset behind `loader` (a prepared, sharded eval loader), on every process."""
    backbone.eval()
    features = labels = None
    for batch in runtime.progress(loader, desc, accelerator):
        with accelerator.autocast():
            f = backbone(batch["pixel_values"]).float()
        f, y, idx = accelerator.gather_for_metrics((f, batch["label"], batch["index"]))
        if features is None:
            features = torch.empty(num_rows, f.shape[1], device=f.device)
            labels = torch.empty(num_rows, dtype=torch.long, device=f.device)
        features[idx], labels[idx] = f, y
    return features, labels


class FeatureLoader:
    """Training batches of cached features: the same (row, epoch) batches the image loader would
    give, as {"pixel_values": features, "label", "index"} already on the device."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, sampler: EpochBatchSampler):
        self.features, self.labels, self.batch_sampler = features, labels, sampler

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        for keys in self.batch_sampler:
            rows = torch.tensor([row for row, _ in keys], device=self.features.device)
            yield {"pixel_values": self.features[rows], "label": self.labels[rows], "index": rows}


class FeatureSet(Dataset):
    """Cached features as a map-style dataset (for the sharded validation loader)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features.cpu(), labels.cpu()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.features[i], "label": self.labels[i], "index": i}


class Channels(torch.nn.Module):
    """A module fed channels-last images when asked."""

    def __init__(self, module: torch.nn.Module, channels_last: bool):
        super().__init__()
        self.module, self.channels_last = module, channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(nhwc(x, self.channels_last))


class FeaturePipeline:
    """A pipeline whose train and val batches are the backbone's features of `inner`'s images;
    everything else (name, test split, samples) is `inner`'s."""

    def __init__(self, inner: Pipeline, features: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        self.inner, self.features = inner, features
        self.name, self.inputs = inner.name, inner.inputs

    def train_loader(self, sampler: EpochBatchSampler, augment: bool) -> FeatureLoader:
        return FeatureLoader(*self.features["train"], sampler)

    def eval_loader(self, split: str) -> DataLoader:
        """Features of the train and val splits only (the head trains and is selected on them)."""
        return DataLoader(FeatureSet(*self.features[split]), self.inputs.eval_batch)

    def on_device(self, batch: dict) -> dict:
        return batch  # features are the head's input as they are

    def samples(self):
        return self.inner.samples()


def compute(
    inner: Pipeline, backbone: nn.Module, channels_last: bool, accelerator
) -> FeaturePipeline:
    """Backbone features of the train and val images, computed once (eval view; every process
    computes its shard and receives all), wrapped around `inner`."""
    i = inner.inputs
    start = time.perf_counter()
    features = {}
    for split in ("train", "val"):
        if split not in i.splits:
            continue
        view = pil.to_hf_dataset(i.splits[split], i.class_names, eval_transform(i.pre))
        loader = accelerator.prepare(make_loader(view, i.eval_batch, workers=i.workers))
        features[split] = extract(
            Channels(backbone, channels_last), loader, accelerator, len(view), f"features {split}"
        )
        stop_workers(loader)
    n = sum(len(labels) for _, labels in features.values())
    accelerator.print(
        f"features of {n} images computed once in {time.perf_counter() - start:.1f}s; "
        f"the head trains on them (train.feature_cache)"
    )
    return FeaturePipeline(inner, features)
