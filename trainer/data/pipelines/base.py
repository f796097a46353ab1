"""What every input pipeline offers the training loop, and what each one reads from.

Three pipelines feed a run (`trainer.data.pipelines.choose` picks one): pil (Pillow decodes and
torchvision augments each image in loader workers), cached (every image decoded once into a
uint8 cache, augmented in batches on the device) and decode (JPEG bytes decoded in batches on
the device). A frozen-backbone phase may wrap any of them in the feature cache
(`trainer.data.pipelines.features`). The loop sees only this interface.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from torch.utils.data import DataLoader

from trainer.config import DataConfig
from trainer.data.sampling import EpochBatchSampler
from trainer.data.transforms import Preprocessing


@dataclass
class Inputs:
    """What a pipeline reads: the split files, the preprocessing, the loaders' sizes."""

    cfg: DataConfig
    splits: dict[str, list[tuple[str, int]]]  # split -> (path, label index), in index order
    class_names: list[str]
    pre: Preprocessing  # at data.image_size
    seed: int  # train.seed: the augmentation draws and the loader workers' seeds
    workers: int  # loader processes per training process
    eval_batch: int  # images per evaluation batch and process

    def paths(self, split: str) -> list[str]:
        return [path for path, _ in self.splits[split]]

    def labels(self, split: str) -> list[int]:
        return [label for _, label in self.splits[split]]


class Pipeline(Protocol):
    """How batches reach the model: loaders give what the CPU side makes, `on_device` finishes
    them on the device into {"pixel_values", "label", "index"}."""

    name: str  # pil, cached or decode: summary.json's "pipeline"
    inputs: Inputs

    def train_loader(self, sampler: EpochBatchSampler, augment: bool) -> Iterable[dict]:
        """Training batches in the sampler's (row, epoch) order; `augment`: random crops and
        flips (and policies) seeded per row, else the eval view."""
        ...

    def eval_loader(self, split: str) -> DataLoader:
        """Every image of `split` once, in order, as the eval view (not yet sharded)."""
        ...

    def on_device(self, batch: dict) -> dict:
        """A batch already on the device -> normalized (and augmented) float images."""
        ...

    def samples(self) -> Sequence[dict]:
        """Single training images as epoch 1 augmented them (for the training-samples plot)."""
        ...
