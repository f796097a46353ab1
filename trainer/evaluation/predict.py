"""`trainer predict`: top-k labels and probabilities for any images, with a saved model folder.

Runs on one process or many (`accelerate launch -m trainer predict ...`): every image is scored
exactly once and the main process writes the file. An image that does not decode is reported by
path and reason instead of stopping the others.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.utils.data import DataLoader, Dataset

from trainer import runtime
from trainer.data import loaders, walk
from trainer.data.badfiles import check_file
from trainer.data.transforms import Preprocessing, eval_transform, load_rgb
from trainer.evaluation.evaluate import forward_gather
from trainer.files import write_text_atomic
from trainer.model.folder import load_for_inference


class _PathDataset(Dataset):
    """Images by path; an unreadable file yields ok=0 instead of raising."""

    def __init__(self, paths: list[str], pre: Preprocessing):
        self.paths, self.pre, self.transform = paths, pre, eval_transform(pre)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            pixels, ok, error = self.transform(load_rgb(self.paths[i])), 1, ""
        except Exception as e:  # any decode failure: report the file, keep going
            size = self.pre.image_size
            # the reason in `trainer scan`'s words ("empty file (0 bytes)"), as eval gives it
            reason = check_file(self.paths[i]) or f"{type(e).__name__}: {e}"
            pixels, ok, error = torch.zeros(3, size, size), 0, reason
        return {"pixel_values": pixels, "index": i, "ok": ok, "error": error}


def expand_paths(paths: list[str]) -> list[str]:
    """Files as given, folders expanded to the images below them."""
    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out.extend(walk.list_images(path))
        elif path.is_file():
            out.append(str(path))
        else:
            raise FileNotFoundError(f"{p!r}: no such file or folder")
    return out


def predict_paths(
    model_dir: str | Path, paths: list[str], topk: int, batch_size: int, workers: int | None
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Top-k labels and probabilities per readable image, sorted by path, plus (path, reason)
    for the unreadable ones."""
    accelerator = runtime.make_accelerator()
    try:
        model, meta, pre = load_for_inference(model_dir)
        model = accelerator.prepare(model)
        names = meta["class_names"]
        files = expand_paths(paths)
        if not files:
            raise FileNotFoundError(f"no images found in {paths}")
        k = max(1, min(topk, len(names)))
        n_workers = loaders.auto_num_workers(workers, runtime.local_world_size(accelerator))
        loader = accelerator.prepare(
            DataLoader(_PathDataset(files, pre), batch_size=batch_size, num_workers=n_workers)
        )
        top, bad = _top_k(model, loader, accelerator, k)
        rows = [
            {"path": files[i], "labels": [names[j] for j in labels], "probabilities": probs}
            for i, labels, probs in top
        ]
        bad = sorted({(files[i], e) for part in gather_object([bad]) for i, e in part})
        rows.sort(key=lambda r: r["path"])
        return rows, bad
    finally:
        runtime.shutdown(accelerator)


def _top_k(
    model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator, k: int
) -> tuple[list[tuple[int, list[int], list[float]]], list[tuple[int, str]]]:
    """(index, top-k classes, their probabilities) of every readable image, gathered from all
    processes; and this process's (index, reason) of the unreadable ones."""

    def probabilities(logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, ...]:
        p, idx = logits.softmax(dim=1).topk(k, dim=1)
        return p, idx, batch["index"], batch["ok"]

    top, bad = [], []
    for (p, idx, index, ok), batch in forward_gather(
        model, loader, accelerator, probabilities, "predict"
    ):
        for pi, ii, i, good in zip(p.tolist(), idx.tolist(), index.tolist(), ok.tolist()):
            if good:
                top.append((i, ii, pi))
        local = zip(batch["index"].tolist(), batch["error"], batch["ok"].tolist())
        bad.extend((i, e) for i, e, good in local if not good)
    return top, bad


def write_predictions(rows: list[dict], out: str | Path, topk: int) -> None:
    """CSV (path, label, probability, label_2, probability_2, ...) or JSON by the file's suffix;
    `-`: CSV on stdout. A file is replaced whole or not at all."""
    if str(out) == "-":
        sys.stdout.write(predictions_csv(rows))
        return
    out = Path(out)
    if out.suffix.lower() == ".json":
        write_text_atomic(out, json.dumps(rows, indent=1, ensure_ascii=False))
    else:
        write_text_atomic(out, predictions_csv(rows))


def predictions_header(k: int) -> list[str]:
    """The CSV's columns for k labels per image."""
    header = ["path", "label", "probability"]
    for j in range(2, k + 1):
        header += [f"label_{j}", f"probability_{j}"]
    return header


def predictions_csv(rows: list[dict]) -> str:
    """The rows as CSV text, probabilities to 6 decimals, as many label columns as the longest row."""
    header = predictions_header(max((len(r["labels"]) for r in rows), default=1))
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(header)
    for r in rows:
        cells = [r["path"]]
        for label, prob in zip(r["labels"], r["probabilities"]):
            cells += [label, f"{prob:.6f}"]
        w.writerow(cells)
    return text.getvalue()
