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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.utils.data import DataLoader, Dataset

from trainer import runtime
from trainer.data import loaders, walk
from trainer.data.badfiles import decode_checked
from trainer.data.transforms import Preprocessing, eval_transform
from trainer.evaluation import calibration
from trainer.evaluation.evaluate import forward_gather
from trainer.evaluation.tta import Views, model_views, views_transform
from trainer.files import write_text_atomic
from trainer.model.folder import load_for_inference, temperature
from trainer.model.safeload import ModelError

# What --min-confidence writes as the label of an image below it (--unknown-label).
UNKNOWN = "unknown"


class _PathDataset(Dataset):
    """Images by path, as eval_transform's (3, S, S) or, with `views` (--tta), views_transform's
    (V, 3, S, S); an unreadable file yields zeros of that shape and ok=0 instead of raising."""

    def __init__(self, paths: list[str], pre: Preprocessing, views: Sequence[str] | None = None):
        self.paths, self.pre = paths, pre
        self.transform = eval_transform(pre) if views is None else views_transform(pre, views)
        size = pre.image_size
        self.shape = (3, size, size) if views is None else (len(views), 3, size, size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        # Decoded as the bad-file check decodes: a file over the pixel limit is refused from its
        # header (load_rgb alone decodes a 20000 x 20000 PNG header whole: 1.9 GB), and a broken
        # one gets the reason in `trainer scan`'s words ("empty file (0 bytes)"), as eval gives it.
        rgb, reason = decode_checked(self.paths[i])
        if rgb is None:  # report the file, keep going
            return {"pixel_values": torch.zeros(self.shape), "index": i, "ok": 0, "error": reason}
        return {"pixel_values": self.transform(rgb), "index": i, "ok": 1, "error": ""}


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
    model_dir: str | Path,
    paths: list[str],
    topk: int,
    batch_size: int,
    workers: int | None,
    *,
    calibrated: bool = True,
    tta: bool = False,
    min_confidence: float | None = None,
    unknown_label: str = UNKNOWN,
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Top-k labels and probabilities per readable image, sorted by path, plus (path, reason)
    for the unreadable ones.

    Probabilities are softmax(logits / T), T the model folder's temperature (1 when not
    `calibrated`), averaged over the model's views with `tta`; with `min_confidence`, an
    image whose top probability is below it gets `unknown_label` as its label."""
    accelerator = runtime.make_accelerator()
    try:
        model, meta, pre = load_for_inference(model_dir)
        names = meta["class_names"]
        if min_confidence is not None:
            check_unknown_label(unknown_label, names, model_dir)
        views = model_views(meta) if tta else None
        model = accelerator.prepare(model if views is None else Views(model))
        files = expand_paths(paths)
        if not files:
            raise FileNotFoundError(f"no images found in {paths}")
        k = max(1, min(topk, len(names)))
        n_workers = loaders.auto_num_workers(workers, runtime.local_world_size(accelerator))
        loader = accelerator.prepare(
            DataLoader(
                _PathDataset(files, pre, views), batch_size=batch_size, num_workers=n_workers
            )
        )
        t = temperature(meta) if calibrated else 1.0
        top, bad = _top_k(model, loader, accelerator, k, t)
        rows = [
            {"path": files[i], "labels": [names[j] for j in labels], "probabilities": probs}
            for i, labels, probs in top
        ]
        if min_confidence is not None:
            mark_unknown(rows, min_confidence, unknown_label)
        bad = sorted({(files[i], e) for part in gather_object([bad]) for i, e in part})
        rows.sort(key=lambda r: r["path"])
        return rows, bad
    finally:
        runtime.shutdown(accelerator)


def check_unknown_label(label: str, class_names: list[str], model_dir: str | Path) -> None:
    """Refuse an "unknown" word that is also a class: the label column would be ambiguous."""
    if label in class_names:
        raise ModelError(
            f"--unknown-label {label!r} is also a class of {model_dir}: a {label!r} row would be "
            f"ambiguous; pick another word, e.g. --unknown-label {label}_other"
        )


def mark_unknown(rows: list[dict], min_confidence: float, label: str) -> None:
    """Label `label` every row whose top probability is below `min_confidence` (the
    probabilities and the other labels stay)."""
    for r in rows:
        if r["probabilities"][0] < min_confidence:
            r["labels"][0] = label


def _top_k(
    model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator, k: int, temperature: float
) -> tuple[list[tuple[int, list[int], list[float]]], list[tuple[int, str]]]:
    """(index, top-k classes, their probabilities) of every readable image, gathered from all
    processes; and this process's (index, reason) of the unreadable ones."""

    def probabilities(logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, ...]:
        p, idx = calibration.probabilities(logits, temperature).topk(k, dim=1)
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
