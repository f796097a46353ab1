"""The PIL pipeline: each image decoded and transformed by torchvision in loader workers, as a
`datasets.Dataset` with an on-the-fly transform. The reference the other pipelines match, and the
one for augmentations that run on PIL images (data.auto_augment, data.random_erasing)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from torch.utils.data import DataLoader

from trainer.data.layout import unreadable_image
from trainer.data.loaders import make_loader, make_train_loader
from trainer.data.pipelines.base import Inputs
from trainer.data.sampling import EpochBatchSampler
from trainer.data.transforms import UNREADABLE, eval_transform, load_rgb, train_transform

if TYPE_CHECKING:
    import datasets


class _ApplyTransform:
    """`datasets` on-the-fly transform: decode paths to RGB, apply a torchvision transform."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def _load(self, path: str):
        try:
            return self.transform(load_rgb(path))
        except UNREADABLE as e:
            raise unreadable_image(path, e) from None

    def __call__(self, batch: dict) -> dict:
        pixels = [self._load(image["path"]) for image in batch["image"]]
        return {"pixel_values": pixels, "label": batch["label"], "index": batch["index"]}


def to_hf_dataset(
    items: Sequence[tuple[str, int]], class_names: list[str], transform: Callable
) -> datasets.Dataset:
    """A `datasets.Dataset` of (image path, ClassLabel, row index) decoded and transformed on the
    fly; the index maps gathered predictions back to files (e.g. for the mistakes gallery)."""
    import datasets  # here: its import takes seconds, and runs that never call this skip it

    features = datasets.Features(
        {
            "image": datasets.Image(decode=False),
            "label": datasets.ClassLabel(names=class_names),
            "index": datasets.Value("int64"),
        }
    )
    columns = {
        "image": [p for p, _ in items],
        "label": [label for _, label in items],
        "index": list(range(len(items))),
    }
    ds = datasets.Dataset.from_dict(columns, features=features)
    return ds.with_transform(_ApplyTransform(transform))


class PilPipeline:
    """data.pipeline=pil: normalized (and augmented) images straight from the loader."""

    name = "pil"

    def __init__(self, inputs: Inputs):
        self.inputs = inputs
        self.datasets = {  # the eval view of every split
            split: to_hf_dataset(items, inputs.class_names, eval_transform(inputs.pre))
            for split, items in inputs.splits.items()
        }
        self.augmented: datasets.Dataset | None = None  # the train split augmented, once asked for

    def _train_set(self, augment: bool) -> datasets.Dataset:
        if not augment:
            return self.datasets["train"]
        if self.augmented is None:
            i = self.inputs
            transform = train_transform(i.pre, i.cfg)
            self.augmented = to_hf_dataset(i.splits["train"], i.class_names, transform)
        return self.augmented

    def train_loader(self, sampler: EpochBatchSampler, augment: bool) -> DataLoader:
        i = self.inputs
        data = self._train_set(augment)
        return make_train_loader(data, sampler, workers=i.workers, seed=i.seed)

    def eval_loader(self, split: str) -> DataLoader:
        return make_loader(
            self.datasets[split], self.inputs.eval_batch, workers=self.inputs.workers
        )

    def on_device(self, batch: dict) -> dict:
        return batch  # already normalized by the workers

    def samples(self) -> datasets.Dataset:
        return self._train_set(self.inputs.cfg.augment)
