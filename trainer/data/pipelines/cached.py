"""The cached pipeline: every indexed file decoded once into the pixel cache (while indexing, as
its bad-file check), crops and flips drawn per image on the CPU and applied to whole batches on
the device.

Training crops (RandomResizedCrop's rule, over each image's cached window: the whole image up to
3:2) and flips are drawn per image from (seed, epoch, row), like the PIL path's augmentation, so resumed runs stay exact; the
device applies them with roi_align (`trainer.data.pipelines.device`). When the cache fits in
device memory (data.cache_on_device) a copy is kept there for the whole run and batches are
gathered from it, with no loader workers and no host copy per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from trainer.config import DataConfig
from trainer.data.loaders import make_loader, make_train_loader
from trainer.data.pipelines.base import Inputs
from trainer.data.pipelines.device import DeviceTransform, Samples
from trainer.data.pipelines.geometry import crop_box
from trainer.data.pipelines.pixelcache import PixelCache, keep_on_device
from trainer.data.sampling import EpochBatchSampler, sample_seed


class CachedTrainView(Dataset):
    """Training batches: a source's images (uint8 windows from a PixelCache, or encoded files
    from `decode.EncodedFiles`) plus each image's crop box (in its window, the image's own
    orientation) and flips, drawn from (seed, epoch, row). Keys are (row, epoch), as from
    EpochBatchSampler."""

    def __init__(
        self, source, labels: Sequence[int], cfg: DataConfig, seed: int, crop: int, augment: bool
    ):
        self.source, self.labels, self.cfg, self.seed = source, list(labels), cfg, seed
        self.crop = crop  # the eval view's side, for a phase that does not augment
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def _draw(self, row: int, epoch: int) -> tuple[tuple[float, ...], bool, bool]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, row))
        box = crop_box(g, *self.source.extent(row), self.cfg.min_crop_scale)
        hflip = self.cfg.hflip and bool(torch.rand(1, generator=g) < 0.5)
        vflip = self.cfg.vflip and bool(torch.rand(1, generator=g) < 0.5)
        return box, hflip, vflip

    def __getitems__(self, keys: list[tuple[int, int]]) -> dict:
        rows = [row for row, _ in keys]
        # No augmentation: the eval view, nothing drawn
        batch = self.source.gather(rows, None if self.augment else self.crop)
        batch["label"] = torch.tensor([self.labels[r] for r in rows])
        batch["index"] = torch.tensor(rows)
        if self.augment:
            draws = [self._draw(row, epoch) for row, epoch in keys]
            batch["boxes"] = torch.tensor([d[0] for d in draws], dtype=torch.float32)
            batch["flips"] = torch.tensor([[d[1], d[2]] for d in draws], dtype=torch.bool)
        return batch


class CachedEvalView(Dataset):
    """The eval view from the cache: the center crop of image_size, as uint8 HWC."""

    def __init__(self, cache: PixelCache, labels: Sequence[int], crop: int):
        self.cache, self.labels, self.crop = cache, list(labels), crop

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, row: int) -> dict:
        return {
            "pixels": self.cache.center(row, self.crop),
            "label": self.labels[row],
            "index": row,
        }


class CachedPipeline:
    """data.pipeline=cached: batches of cached windows, augmented on the device."""

    name = "cached"

    def __init__(self, inputs: Inputs, pixels: PixelCache, device: torch.device, say):
        """Over `pixels`, the cache of every indexed file (`pixelcache.build`), seen per split."""
        self.inputs, self.device, self.say = inputs, device, say
        self.caches = {split: pixels.split(inputs.paths(split)) for split in inputs.splits}
        self.transform = DeviceTransform(inputs.pre, device)
        self.resident: PixelCache | None = None  # the train cache in device memory, if kept there

    def _train_cache(self) -> PixelCache:
        """The train cache in device memory when it is to be kept there: copied at the first
        phase, kept across phases."""
        cache = self.caches["train"]
        if self.resident is None and keep_on_device(self.inputs.cfg, cache, self.device):
            self.resident = cache.to_device(self.device)
            self.say(f"pixel cache: {cache.nbytes / 1e6:.0f} MB held on the device")
        return self.resident if self.resident is not None else cache

    def train_loader(self, sampler: EpochBatchSampler, augment: bool) -> DataLoader:
        i = self.inputs
        cache = self._train_cache()
        resident = cache.resident is not None
        # Batches gathered in device memory need no workers (and cannot be pinned).
        workers = 0 if resident else min(i.workers, 4)
        view = CachedTrainView(cache, i.labels("train"), i.cfg, i.seed, i.pre.image_size, augment)
        return make_train_loader(
            view, sampler, workers=workers, seed=i.seed, seeded=False, pin=not resident
        )

    def eval_loader(self, split: str) -> DataLoader:
        i = self.inputs
        view = CachedEvalView(self.caches[split], i.labels(split), i.pre.image_size)
        return make_loader(view, i.eval_batch, workers=min(i.workers, 4))

    def on_device(self, batch: dict) -> dict:
        return self.transform(batch)

    def samples(self) -> Samples:
        i = self.inputs
        view = CachedTrainView(
            self.caches["train"], i.labels("train"), i.cfg, i.seed, i.pre.image_size, i.cfg.augment
        )
        return Samples(view, self.transform)
