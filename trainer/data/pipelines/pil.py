"""The PIL pipeline: each image decoded and transformed by torchvision in loader workers, as a
`datasets.Dataset` with an on-the-fly transform."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import datasets

from trainer.data.imagefolder import DataError
from trainer.data.transforms import load_rgb


class _ApplyTransform:
    """`datasets` on-the-fly transform: decode paths to RGB, apply a torchvision transform."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def _load(self, path: str):
        try:
            return self.transform(load_rgb(path))
        except (OSError, ValueError, SyntaxError) as e:  # what Pillow raises for broken files
            raise DataError(
                f"{path}: unreadable image ({type(e).__name__}: {e}); remove or fix it"
            ) from None

    def __call__(self, batch: dict) -> dict:
        pixels = [self._load(image["path"]) for image in batch["image"]]
        return {"pixel_values": pixels, "label": batch["label"], "index": batch["index"]}


def to_hf_dataset(
    items: Sequence[tuple[str, int]], class_names: list[str], transform: Callable
) -> datasets.Dataset:
    """A `datasets.Dataset` of (image path, ClassLabel, row index) decoded and transformed on the
    fly; the index maps gathered predictions back to files (e.g. for the mistakes gallery)."""
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
