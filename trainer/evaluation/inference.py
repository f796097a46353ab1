"""Using a saved model folder: evaluate it on a labelled folder, predict labels for any images.

Both run on one process or many (`accelerate launch -m trainer ...`): every image is scored
exactly once and the main process writes the results.
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
from trainer.data import imagefolder, loaders
from trainer.data.badfiles import cache_file, check_file, check_files
from trainer.data.loaders import make_loader
from trainer.data.pipelines import pil
from trainer.data.transforms import Preprocessing, eval_transform, load_rgb
from trainer.evaluation import report
from trainer.evaluation.evaluate import evaluate
from trainer.files import check_replaceable, first_line, read_json_or_none, write_text_atomic
from trainer.model import classifier


def _load(
    model_dir: str | Path, accelerator: Accelerator
) -> tuple[torch.nn.Module, dict, Preprocessing]:
    model, meta = classifier.load_model_folder(model_dir)
    return accelerator.prepare(model), meta, Preprocessing.from_dict(meta["preprocessing"])


def evaluate_folder(
    model_dir: str | Path,
    data_dir: str | Path,
    split: str,
    batch_size: int,
    workers: int | None,
    report_dir: str | Path | None = None,
    layout: str = "auto",
) -> dict[str, Any]:
    """Metrics of the model folder on a labelled class-per-folder tree (read as data.layout
    `layout`); with `report_dir`, also report.json, report.md and plots there (main process)."""
    accelerator = runtime.make_accelerator()
    try:
        model, meta, pre = _load(model_dir, accelerator)
        names = meta["class_names"]
        items, bad = readable_items(
            imagefolder.labelled_items(data_dir, names, split, layout=layout), data_dir
        )
        ds = pil.to_hf_dataset(items, names, eval_transform(pre))
        n_workers = loaders.auto_num_workers(workers, runtime.local_world_size(accelerator))
        loader = make_loader(ds, batch_size, workers=n_workers)
        result, preds = evaluate(
            model, accelerator.prepare(loader), accelerator, len(names), "eval"
        )
        if report_dir is not None and accelerator.is_main_process:
            mistakes = report.confident_mistakes(preds, items)
            report.write_report(
                Path(report_dir),
                result,
                names,
                mistakes,
                split=split,
                model=str(model_dir),
                data=str(data_dir),
            )
        result["class_names"] = names
        result["bad_files"] = [{"path": p, "reason": r} for p, r in bad]
        return result
    finally:
        runtime.shutdown(accelerator)


def readable_items(
    items: list[tuple[str, int]], data_dir: str | Path
) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """Leave out the files that do not decode, as training does: (good items, [(path, reason)]).
    Verdicts are cached like `trainer scan`'s, so a second eval of the folder does not decode again."""
    # A cache of its own: check_files keeps only the verdicts of the files it was given, and
    # eval gives one split; training's cache of the whole folder stays whole.
    cache = cache_file(f"{Path(data_dir).expanduser().resolve()}#eval")
    bad = check_files([p for p, _ in items], cache=cache)
    good = [(p, label) for p, label in items if p not in bad]
    if not good:
        listed = "; ".join(f"{p} ({r})" for p, r in list(bad.items())[:3])
        raise imagefolder.DataError(
            f"none of the {len(items)} images under {data_dir} can be read: {listed}"
            + (" ..." if len(bad) > 3 else "")
            + "; `trainer scan` lists every bad file"
        )
    return good, sorted(bad.items())


def not_pre_split_note(model_dir: str | Path, data_dir: str | Path, layout: str) -> str | None:
    """What eval says when it scores a whole class folder: its numbers include any image the
    model trained on, unlike a pre-split folder's test split."""
    notes: list[str] = []
    root = imagefolder.find_image_root(Path(data_dir).expanduser(), layout, notes)
    if imagefolder.split_folders(root, layout, notes, need_train=False):
        return None
    note = (
        f"{data_dir} is not pre-split: every image is scored, including any the model was "
        "trained on; for honest numbers evaluate a held-out folder"
    )
    run_report = Path(model_dir).parent / "report.json"
    if run_report.is_file() and (run_report.parent / "trainer-run.json").is_file():
        note += f", or see {run_report} (the run's held-out split)"
    return note


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
            out.extend(imagefolder.list_images(path))
        elif path.is_file():
            out.append(str(path))
        else:
            raise FileNotFoundError(f"{p!r}: no such file or folder")
    return out


def predict_paths(
    model_dir: str | Path, paths: list[str], topk: int, batch_size: int, workers: int | None
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Top-k labels and probabilities per readable image, plus (path, reason) for unreadable ones."""
    accelerator = runtime.make_accelerator()
    try:
        model, meta, pre = _load(model_dir, accelerator)
        names = meta["class_names"]
        files = expand_paths(paths)
        if not files:
            raise FileNotFoundError(f"no images found in {paths}")
        k = max(1, min(topk, len(names)))
        n_workers = loaders.auto_num_workers(workers, runtime.local_world_size(accelerator))
        loader = accelerator.prepare(
            DataLoader(_PathDataset(files, pre), batch_size=batch_size, num_workers=n_workers)
        )
        rows, bad = [], []
        model.eval()
        with torch.no_grad():
            for batch in runtime.progress(loader, "predict", accelerator):
                probs = model(batch["pixel_values"]).float().softmax(dim=1)
                p, idx = probs.topk(k, dim=1)
                p, idx, index, ok = accelerator.gather_for_metrics(
                    (p, idx, batch["index"], batch["ok"])
                )
                for pi, ii, i, good in zip(p.tolist(), idx.tolist(), index.tolist(), ok.tolist()):
                    if good:
                        rows.append(
                            {
                                "path": files[i],
                                "labels": [names[j] for j in ii],
                                "probabilities": pi,
                            }
                        )
                bad.extend(
                    (files[i], e)
                    for i, e, good in zip(
                        batch["index"].tolist(), batch["error"], batch["ok"].tolist()
                    )
                    if not good
                )
        bad = sorted({b for part in gather_object([bad]) for b in part})  # dedupe DDP's padding
        rows.sort(key=lambda r: r["path"])
        return rows, bad
    finally:
        runtime.shutdown(accelerator)


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
    header = ["path", "label", "probability"]
    for j in range(2, k + 1):
        header += [f"label_{j}", f"probability_{j}"]
    return header


def predictions_csv(rows: list[dict]) -> str:
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


# ----------------------------------------------------------------------------- earlier outputs
# What predict and eval wrote before, told apart from the user's own files: only these are
# replaced by a new --out / --json / --report (files.check_replaceable).

PREDICTION_KEYS = {"path", "labels", "probabilities"}
REPORT_NAMES = {"report.json", "report.md", "plots"}
REPORT_PLOTS = {"confusion_matrix.png", "mistakes.png"}


def is_predictions_file(path: Path) -> bool:
    """A CSV or JSON that write_predictions wrote."""
    line = first_line(path)
    if line is None:
        return False
    cells = line.split(",")
    if len(cells) % 2 == 1 and cells == predictions_header((len(cells) - 1) // 2):
        return True
    rows = read_json_or_none(path)
    return isinstance(rows, list) and all(
        isinstance(r, dict) and set(r) == PREDICTION_KEYS for r in rows
    )


def is_metrics_json(path: Path) -> bool:
    """A JSON that `trainer eval --json` wrote."""
    result = read_json_or_none(path)
    return isinstance(result, dict) and {"accuracy", "class_names"} <= set(result)


def is_eval_report(folder: Path) -> bool:
    """A folder that `trainer eval --report` wrote: report.json of the report's shape, report.md
    and plots/ with its two PNGs, nothing else (a run folder holds its model, config, ...)."""
    names = {p.name for p in folder.iterdir()}
    if "report.json" not in names or not names <= REPORT_NAMES:
        return False
    plots = folder / "plots"
    if plots.exists() and not (
        plots.is_dir() and {p.name for p in plots.iterdir()} <= REPORT_PLOTS
    ):
        return False
    report_json = folder / "report.json"
    content = read_json_or_none(report_json) if report_json.is_file() else None
    return isinstance(content, dict) and {"overall", "per_class"} <= set(content)


def check_outputs(
    out: str | None = None, json_out: str | None = None, report_dir: str | None = None
) -> None:
    """Refuse, before any work, an output path that holds something predict/eval did not write."""
    if out is not None and out != "-":
        check_replaceable(
            Path(out), "--out", is_predictions_file, "a predictions file written by trainer predict"
        )
    if json_out is not None:
        check_replaceable(
            Path(json_out), "--json", is_metrics_json, "a metrics file written by trainer eval"
        )
    if report_dir is not None:
        what = "a report folder written by trainer eval --report"
        if (Path(report_dir) / "trainer-run.json").is_file():
            what += " (it is a training run folder)"
        check_replaceable(Path(report_dir), "--report", is_eval_report, what, folder=True)
