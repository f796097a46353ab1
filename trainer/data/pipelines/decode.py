"""The decode pipeline, for data sets too big to cache: loader workers only read the files'
bytes, and each batch of JPEGs is decoded on the device (torchvision.io.decode_jpeg: nvJPEG on a
GPU), resized and windowed there as the pixel cache would hold it, then augmented like the cached
pipeline's batches (the same draws). Other formats are decoded by Pillow in the workers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from trainer.data.layout import unreadable_image
from trainer.data.loaders import make_loader, make_train_loader
from trainer.data.pipelines.base import Inputs
from trainer.data.pipelines.cached import CachedTrainView
from trainer.data.pipelines.device import DeviceTransform, Samples
from trainer.data.pipelines.geometry import Window, file_window
from trainer.data.pipelines.pixelcache import decode
from trainer.data.sampling import EpochBatchSampler
from trainer.data.transforms import UNREADABLE, Preprocessing


class EncodedFiles:
    """The decode pipeline's source: JPEG files as their bytes (decoded on the device later),
    other formats decoded here by Pillow into the window the cache would hold."""

    def __init__(self, paths: Sequence[str], pre: Preprocessing):
        self.paths, self.pre, self.size = list(paths), pre, pre.resize_size
        self.extents: dict[int, tuple[int, int]] = {}  # row -> its window's (height, width)

    def extent(self, row: int) -> tuple[int, int]:
        """(height, width) of one image's window, from its file's header (read once)."""
        if row not in self.extents:
            win = file_window(self.paths[row], self.size, self.pre.image_size)
            self.extents[row] = (win.height, win.width)
        return self.extents[row]

    def read(self, row: int) -> tuple[torch.Tensor, Window | None]:
        """A JPEG's bytes (its Window comes with the decode), or another format's window."""
        path = self.paths[row]
        with open(path, "rb") as f:
            head = f.read()
        if head[:3] == b"\xff\xd8\xff":  # JPEG
            return torch.frombuffer(bytearray(head), dtype=torch.uint8), None
        try:
            pixels, win = decode(path, self.pre, self.size)
        except UNREADABLE as e:
            raise unreadable_image(path, e) from None
        return torch.from_numpy(pixels), win

    def gather(self, rows: list[int], crop: int | None) -> dict:
        """A training batch's images, still encoded; without crop boxes (data.augment=false)
        the device takes the center crop of `crop` itself."""
        encoded, windows = zip(*(self.read(r) for r in rows))
        return {"encoded": list(encoded), "windows": list(windows)}


class EncodedEvalView(Dataset):
    """The decode pipeline's eval view: one encoded (or Pillow-decoded) image per row."""

    def __init__(self, files: EncodedFiles, labels: Sequence[int]):
        self.files, self.labels = files, list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, row: int) -> dict:
        encoded, win = self.files.read(row)
        return {"encoded": encoded, "window": win, "label": self.labels[row], "index": row}


def collate_encoded(samples: list[dict]) -> dict:
    """Eval batches of encoded images: the bytes stay a list (their lengths differ)."""
    return {
        "encoded": [s["encoded"] for s in samples],
        "windows": [s["window"] for s in samples],
        "label": torch.tensor([s["label"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples]),
    }


class DecodePipeline:
    """data.pipeline=decode: batches of file bytes, decoded and augmented on the device."""

    name = "decode"

    def __init__(self, inputs: Inputs, device: torch.device):
        self.inputs = inputs
        self.files = {
            split: EncodedFiles(inputs.paths(split), inputs.pre) for split in inputs.splits
        }
        self.transform = DeviceTransform(inputs.pre, device)

    def _train_view(self, augment: bool) -> CachedTrainView:
        i = self.inputs
        return CachedTrainView(
            self.files["train"], i.labels("train"), i.cfg, i.seed, i.pre.image_size, augment
        )

    def train_loader(self, sampler: EpochBatchSampler, augment: bool) -> DataLoader:
        i = self.inputs
        return make_train_loader(
            self._train_view(augment), sampler, workers=min(i.workers, 4), seed=i.seed, seeded=False
        )

    def eval_loader(self, split: str) -> DataLoader:
        i = self.inputs
        view = EncodedEvalView(self.files[split], i.labels(split))
        return make_loader(view, i.eval_batch, workers=min(i.workers, 4), collate=collate_encoded)

    def on_device(self, batch: dict) -> dict:
        return self.transform(batch)

    def samples(self) -> Samples:
        return Samples(self._train_view(self.inputs.cfg.augment), self.transform)
