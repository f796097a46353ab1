"""What does the backbone see in each image: L2-normalized pooled features of every indexed image,
and two hashes per file (its bytes, its decoded pixels) for exact duplicates.

The images are the runner's own (`trainer.data.splits.scan`: same layout rules, same bad files
left out, same splits) seen through the model's eval transform (resize + center crop), so what the
audit calls a near-copy is what the model would be shown. Under `accelerate launch` each process
embeds its shard and every process receives all rows (`features.extract`, as the feature cache).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from trainer import runtime
from trainer.config import ModelConfig
from trainer.data.badfiles import default_workers
from trainer.data.loaders import make_loader, stop_workers
from trainer.data.pipelines import pil
from trainer.data.pipelines.features import extract
from trainer.data.splits import DataIndex
from trainer.data.transforms import Preprocessing, eval_transform
from trainer.model.classifier import build_model
from trainer.model.folder import load_for_inference

BACKBONE_SOURCES = ("torchvision/", "timm/")


@dataclass
class Rows:
    """Every indexed image once, in a fixed order: train, then val, then test."""

    paths: list[str]
    labels: np.ndarray  # (N,) int64 label index into class_names
    splits: list[str]  # "train", "val" or "test" per row
    class_names: list[str]


def rows_of(index: DataIndex) -> Rows:
    """The index's images as rows (the order every audit file and embedding uses)."""
    paths, labels, splits = [], [], []
    for split in ("train", "val", "test"):
        for path, label in index.splits.get(split, []):
            paths.append(path)
            labels.append(label)
            splits.append(split)
    return Rows(paths, np.asarray(labels, dtype=np.int64), splits, index.class_names)


def load_backbone(model: str) -> tuple[nn.Module, Preprocessing, str]:
    """(backbone, its preprocessing, what it is) for `--model`: a model folder (RUN_DIR/model),
    or a backbone name with the pretrained weights the runner would load (offline: the runner's
    own one-line error when they are not cached)."""
    if model.startswith(BACKBONE_SOURCES) and not Path(model).is_dir():
        classifier, pre = build_model(ModelConfig(name=model, pretrained=True), num_classes=2)
        return classifier.backbone, pre, f"{model} (pretrained)"
    classifier, meta, pre = load_for_inference(model)  # ModelError names a missing folder
    return classifier.backbone, pre, f"{model} ({meta['architecture']['name']})"


def embed(
    rows: Rows, backbone: nn.Module, pre: Preprocessing, batch_size: int, workers: int, accelerator
) -> np.ndarray:
    """(N, D) float32 L2-normalized features of every row, on every process."""
    items = list(zip(rows.paths, rows.labels.tolist()))
    view = pil.to_hf_dataset(items, rows.class_names, eval_transform(pre))
    loader = accelerator.prepare(make_loader(view, batch_size, workers=workers))
    backbone = backbone.to(accelerator.device)  # no DDP: nothing trains
    features, _ = extract(backbone, loader, accelerator, len(view), "embeddings")
    stop_workers(loader)
    emb = features.cpu().numpy().astype(np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.maximum(norms, 1e-12)


def file_hashes(path: str) -> tuple[str, str]:
    """(sha256 of the file's bytes, sha256 of its decoded RGB pixels and size): the same picture
    saved twice as PNG has two byte hashes and one pixel hash."""
    data = Path(path).read_bytes()
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    pixels = hashlib.sha256(f"{rgb.width}x{rgb.height}".encode())
    pixels.update(rgb.tobytes())
    return hashlib.sha256(data).hexdigest(), pixels.hexdigest()


def all_hashes(paths: list[str], accelerator, workers: int | None = None) -> list[tuple[str, str]]:
    """file_hashes of every path, in threads (decoding and hashing release the GIL)."""
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        hashes = pool.map(file_hashes, paths)
        return list(
            runtime.progress(hashes, "hashes", accelerator, total=len(paths), unit="images")
        )
