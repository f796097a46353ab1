"""`trainer eval`: a saved model folder's numbers on a labelled folder, and what they include.

Runs on one process or many (`accelerate launch -m trainer eval ...`): the one evaluate() scores
every image exactly once and the main process writes the report. Files that do not decode are
left out as training leaves them out, and listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trainer import runtime
from trainer.data import loaders, splits
from trainer.data.badfiles import cache_file, check_files
from trainer.data.layout import DataError, find_image_root, split_folders
from trainer.data.pipelines import pil
from trainer.data.transforms import eval_transform
from trainer.evaluation import report
from trainer.evaluation.evaluate import evaluate
from trainer.evaluation.tta import Views, model_views, views_transform
from trainer.model.folder import load_for_inference, temperature


def evaluate_folder(
    model_dir: str | Path,
    data_dir: str | Path,
    split: str,
    batch_size: int,
    workers: int | None,
    report_dir: str | Path | None = None,
    layout: str = "auto",
    *,
    calibrated: bool = True,
    tta: bool = False,
) -> dict[str, Any]:
    """Metrics of the model folder on a labelled class-per-folder tree (read as data.layout
    `layout`), with its class names, the temperature and views used, and the files left out;
    with `report_dir`, also report.json, report.md, predictions.csv and plots there (main
    process).

    Probabilities are softmax(logits / T), T the model folder's temperature (1 when not
    `calibrated`), averaged over the model's views (tta.model_views) with `tta`."""
    accelerator = runtime.make_accelerator()
    try:
        model, meta, pre = load_for_inference(model_dir)
        names = meta["class_names"]
        views = model_views(meta) if tta else None
        model = accelerator.prepare(model if views is None else Views(model))
        items, bad = readable_items(
            splits.labelled_items(data_dir, names, split, layout=layout), data_dir
        )
        transform = eval_transform(pre) if views is None else views_transform(pre, views)
        ds = pil.to_hf_dataset(items, names, transform)
        n_workers = loaders.auto_num_workers(workers, runtime.local_world_size(accelerator))
        loader = accelerator.prepare(loaders.make_loader(ds, batch_size, workers=n_workers))
        t = temperature(meta) if calibrated else 1.0
        with_report = report_dir is not None
        result, preds = evaluate(
            model, loader, accelerator, len(names), "eval", temperature=t, keep_logits=with_report
        )
        loaders.stop_workers(loader)
        if with_report and accelerator.is_main_process:
            context = {"split": split, "model": str(model_dir), "data": str(data_dir)}
            _write_report(Path(report_dir), result, preds, items, names, t, views, context)
        result["class_names"] = names
        result["temperature"] = t
        result["tta_views"] = list(views or ())
        result["bad_files"] = [{"path": p, "reason": r} for p, r in bad]
        return result
    finally:
        runtime.shutdown(accelerator)


def _write_report(
    folder: Path,
    result: dict,
    preds: dict[str, torch.Tensor],
    items: list[tuple[str, int]],
    names: list[str],
    temperature: float,
    views: Sequence[str] | None,
    context: dict[str, str],
) -> None:
    """eval --report: report.json/md with the decisions (calibration, ROC/PR, coverage),
    predictions.csv and the plots."""
    decisions = (
        report.decisions(preds["logits"], preds["label"], names, temperature) if preds else None
    )
    if views:
        context = {**context, "tta_views": list(views)}
    report.write_report(
        folder,
        result,
        names,
        report.confident_mistakes(preds, items),
        decisions=decisions,
        **context,
    )
    report.write_predictions(folder / "predictions.csv", preds, items, names, context["data"])


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
        raise DataError(
            f"none of the {len(items)} images under {data_dir} can be read: {listed}"
            + (" ..." if len(bad) > 3 else "")
            + "; `trainer scan` lists every bad file"
        )
    return good, sorted(bad.items())


def not_pre_split_note(model_dir: str | Path, data_dir: str | Path, layout: str) -> str | None:
    """What eval says when it scores a whole class folder: its numbers include any image the
    model trained on, unlike a pre-split folder's test split."""
    notes: list[str] = []
    root = find_image_root(Path(data_dir).expanduser(), layout, notes)
    if split_folders(root, layout, notes, need_train=False):
        return None
    note = (
        f"{data_dir} is not pre-split: every image is scored, including any the model was "
        "trained on; for honest numbers evaluate a held-out folder"
    )
    run_report = Path(model_dir).parent / "report.json"
    if run_report.is_file() and (run_report.parent / "trainer-run.json").is_file():
        note += f", or see {run_report} (the run's held-out split)"
    return note
