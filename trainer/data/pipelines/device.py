"""What happens to a cached or decode pipeline's batch on the device: JPEG decoding (decode
pipeline), the crop + resize + flip of training (roi_align, bilinear), normalization.

A batch arrives as uint8 squares (S x S, the eval resize) or encoded JPEGs, plus per-image crop
boxes and flips drawn on the CPU (`trainer.data.pipelines.cached.CachedTrainView`), and leaves as
normalized float images, so the only per-image work in the loader workers is a file read.
"""

from __future__ import annotations

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.ops import roi_align

from trainer.data.pipelines.pixelcache import square_offsets
from trainer.data.transforms import Preprocessing, center_crop_offset


def decode_squares(encoded: list[torch.Tensor], pre: Preprocessing, device) -> torch.Tensor:
    """Encoded JPEGs (1-D uint8) and ready squares (S x S x 3) -> B x S x S x 3 uint8 on `device`:
    decoded there, resized so the shorter side is S (antialiased) and squared like the cache."""
    size = pre.resize_size
    jpegs = [i for i, e in enumerate(encoded) if e.dim() == 1]
    out: list[torch.Tensor | None] = [e.to(device) if e.dim() == 3 else None for e in encoded]
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
            h, w = img.shape[1:]
            scale = size / min(h, w)
            nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
            img = torch.nn.functional.interpolate(
                img[None].float(), size=(nh, nw), mode=pre.interpolation, antialias=True
            )[0]
            top, left = square_offsets(nh, nw, size, pre.image_size)
            square = img[:, top : top + size, left : left + size].round().clamp(0, 255)
            out[i] = square.to(torch.uint8).permute(1, 2, 0)
    return torch.stack(out)


class DeviceTransform:
    """uint8 batches on the device -> normalized float images: crop + resize + flip for training
    (roi_align, bilinear), just normalization for the eval view."""

    def __init__(self, pre: Preprocessing, device: torch.device):
        self.pre, self.device = pre, device
        self.size = pre.image_size
        self.mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1) * 255

    def __call__(self, batch: dict) -> dict:
        if "encoded" in batch:  # decode pipeline: decode + square here, then as from the cache
            squares = decode_squares(batch.pop("encoded"), self.pre, self.device)
            if "boxes" not in batch:  # eval view (or data.augment=false): the center crop
                t = center_crop_offset(self.pre.resize_size, self.size)
                squares = squares[:, t : t + self.size, t : t + self.size]
            batch["pixels"] = squares
        if "pixels" not in batch:
            return batch
        x = batch.pop("pixels").permute(0, 3, 1, 2).float()  # B x 3 x H x W, 0..255
        if "boxes" in batch:
            boxes = batch.pop("boxes")
            index = torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)
            rois = torch.cat([index[:, None], boxes], dim=1)
            x = roi_align(x, rois, (self.size, self.size), 1.0, sampling_ratio=2, aligned=True)
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
