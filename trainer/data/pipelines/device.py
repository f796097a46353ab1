"""What happens to a cached or decode pipeline's batch on the device: JPEG decoding (decode
pipeline), the crop + resize + flip of training (roi_align, bilinear), normalization.

A batch arrives as uint8 windows (shorter side S, the eval resize: `geometry`) or encoded JPEGs,
plus per-image crop boxes and flips drawn on the CPU (`cached.CachedTrainView`), and leaves as
normalized float images, so the only per-image work in the loader workers is a file read.
"""

from __future__ import annotations

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.ops import roi_align

from trainer.data.pipelines.geometry import (
    Window,
    eval_crop,
    resized_size,
    store,
    stored_boxes,
    window,
)
from trainer.data.transforms import Preprocessing


def decode_windows(
    encoded: list[torch.Tensor], windows: list[Window | None], pre: Preprocessing, device
) -> tuple[list[torch.Tensor], list[Window]]:
    """Encoded JPEGs (1-D uint8) and ready windows (with their Window) -> each image's window as
    the cache stores it (S x width x 3 uint8, landscape) on `device`, and its Window: decoded
    there, resized so the shorter side is S (antialiased)."""
    size = pre.resize_size
    jpegs = [i for i, e in enumerate(encoded) if e.dim() == 1]
    out: list[torch.Tensor | None] = [e.to(device) if e.dim() == 3 else None for e in encoded]
    where = list(windows)
    if jpegs:
        try:
            images = decode_jpeg(
                [encoded[i].cpu() for i in jpegs],  # nvJPEG reads from host memory
                mode=ImageReadMode.RGB,
                device=device,
                apply_exif_orientation=True,
            )
        except RuntimeError:  # e.g. CMYK on nvJPEG: decode those on the CPU one by one
            images = [
                decode_jpeg(
                    encoded[i].cpu(), mode=ImageReadMode.RGB, apply_exif_orientation=True
                ).to(device)
                for i in jpegs
            ]
        for i, img in zip(jpegs, images):
            nh, nw = resized_size(*img.shape[1:], size)
            img = torch.nn.functional.interpolate(
                img[None].float(), size=(nh, nw), mode=pre.interpolation, antialias=True
            )[0]
            where[i] = window(nh, nw, size, pre.image_size)
            pixels = store(img.permute(1, 2, 0), where[i]).round().clamp(0, 255)
            out[i] = pixels.to(torch.uint8)
    return out, where


def _padded(windows: list[torch.Tensor]) -> torch.Tensor:
    """Stored windows of one height and various widths -> B x S x L x 3, zero-padded."""
    width = max(w.shape[1] for w in windows)
    out = windows[0].new_zeros((len(windows), windows[0].shape[0], width, 3))
    for i, w in enumerate(windows):
        out[i, :, : w.shape[1]] = w
    return out


class DeviceTransform:
    """uint8 batches on the device -> normalized float images: crop + resize + flip for training
    (roi_align, bilinear), just normalization for the eval view."""

    def __init__(self, pre: Preprocessing, device: torch.device):
        self.pre, self.device = pre, device
        self.size = pre.image_size
        self.mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1) * 255

    def _decode(self, batch: dict) -> None:
        """The decode pipeline's batch: decoded and windowed here, then as from the cache."""
        stored, windows = decode_windows(
            batch.pop("encoded"), batch.pop("windows"), self.pre, self.device
        )
        if "boxes" in batch:
            batch["pixels"] = _padded(stored)
            flags = [w.transposed for w in windows]
            batch["transposed"] = torch.tensor(flags, device=self.device)
        else:  # eval view (or data.augment=false): the center crop
            crops = [eval_crop(s, w.row(), self.size) for s, w in zip(stored, windows)]
            batch["pixels"] = torch.stack(crops)

    def __call__(self, batch: dict) -> dict:
        if "encoded" in batch:
            self._decode(batch)
        if "pixels" not in batch:
            return batch
        x = batch.pop("pixels").permute(0, 3, 1, 2).float()  # B x 3 x H x W, 0..255
        if "boxes" in batch:
            boxes = batch.pop("boxes")
            transposed = batch.pop("transposed", torch.zeros(len(boxes), dtype=torch.bool))
            transposed = transposed.to(boxes.device).view(-1, 1, 1, 1)
            boxes = stored_boxes(boxes, transposed.view(-1))
            index = torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)
            rois = torch.cat([index[:, None], boxes], dim=1)
            x = roi_align(x, rois, (self.size, self.size), 1.0, sampling_ratio=2, aligned=True)
            x = torch.where(transposed, x.transpose(2, 3), x)  # back to the image's orientation
            flips = batch.pop("flips")
            x = torch.where(flips[:, 0].view(-1, 1, 1, 1), x.flip(3), x)
            x = torch.where(flips[:, 1].view(-1, 1, 1, 1), x.flip(2), x)
        batch["pixel_values"] = (x - self.mean) / self.std
        return batch


class Samples:
    """Single augmented training images from a batched view (for the training-samples plot)."""

    def __init__(self, view, transform: DeviceTransform):
        self.view, self.transform = view, transform

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, row: int) -> dict:
        batch = self.view.__getitems__([(row, 0)])
        batch = {
            k: v.to(self.transform.device) if torch.is_tensor(v) else v for k, v in batch.items()
        }
        out = self.transform(batch)
        return {"pixel_values": out["pixel_values"][0].cpu(), "label": int(out["label"][0])}
