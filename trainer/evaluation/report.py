"""The evaluation report: report.json (every number) and report.md (tables + the plots).

Written after training (best model on the test split, else val) and by `trainer eval --report`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trainer.evaluation import plots
from trainer.files import write_text_atomic

MISTAKES_SHOWN = 16


def confident_mistakes(
    preds: dict[str, torch.Tensor], items: Sequence[tuple[str, int]], n: int = MISTAKES_SHOWN
) -> list[dict[str, Any]]:
    """The n wrong predictions made with the highest confidence, as path/true/predicted/confidence."""
    if not preds:
        return []
    top1 = preds["topk"][:, 0]
    wrong = (top1 != preds["label"]).nonzero().flatten()
    order = wrong[preds["confidence"][wrong].argsort(descending=True)][:n]
    return [
        {
            "path": items[int(preds["index"][i])][0],
            "true": int(preds["label"][i]),
            "predicted": int(top1[i]),
            "confidence": float(preds["confidence"][i]),
        }
        for i in order
    ]


def write_predictions(
    path: Path,
    preds: dict[str, torch.Tensor],
    items: Sequence[tuple[str, int]],
    class_names: Sequence[str],
    root: str | Path,
) -> None:
    """predictions.csv: one row per evaluated image, in the order of `items` (the split): its
    path relative to the data `root`, true and predicted class, confidence (the top class's
    softmax probability), cross-entropy loss, correct (1/0) and the top-k classes, best first,
    separated by "|" (k = 5, or the number of classes when fewer)."""
    k = preds["topk"].shape[1] if preds else min(5, len(class_names))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "true", "predicted", "confidence", "loss", "correct", f"top{k}"])
    if preds:
        for i in preds["index"].argsort().tolist():
            top = [class_names[c] for c in preds["topk"][i].tolist()]
            true = class_names[int(preds["label"][i])]
            writer.writerow(
                [
                    os.path.relpath(items[int(preds["index"][i])][0], root),
                    true,
                    top[0],
                    f"{float(preds['confidence'][i]):.6f}",
                    f"{float(preds['loss'][i]):.6f}",
                    int(top[0] == true),
                    "|".join(top),
                ]
            )
    write_text_atomic(path, out.getvalue())


def most_confused(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], n: int = 10
) -> list[dict]:
    """The n (true, predicted) class pairs with the most mistakes, largest count first."""
    pairs = [
        {"true": class_names[i], "predicted": class_names[j], "count": int(c)}
        for i, row in enumerate(matrix)
        for j, c in enumerate(row)
        if i != j and c > 0
    ]
    return sorted(pairs, key=lambda p: -p["count"])[:n]


def build_report(
    result: dict, class_names: Sequence[str], mistakes: list[dict], **context: Any
) -> dict:
    """Everything report.json holds: context (split, model, data), overall numbers, per class."""
    per_class = [
        {
            "class": name,
            "support": result["support"][i],
            "precision": result["precision"][i],
            "recall": result["recall"][i],
            "f1": result["f1"][i],
        }
        for i, name in enumerate(class_names)
    ]
    overall = {
        k: result[k]
        for k in (
            "samples",
            "accuracy",
            "top5_accuracy",
            "balanced_accuracy",
            "macro_f1",
            "loss",
            "ece",
        )
        if k in result
    }
    return {
        **context,
        "overall": overall,
        "per_class": per_class,
        "confusion_matrix": result["confusion_matrix"],
        "confusion_matrix_normalized": result["confusion_matrix_normalized"],
        "most_confused": most_confused(result["confusion_matrix"], class_names),
        "confident_mistakes": [
            {**m, "true": class_names[m["true"]], "predicted": class_names[m["predicted"]]}
            for m in mistakes
        ],
    }


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def render_markdown(report: dict, plot_files: dict[str, str]) -> str:
    """report.md: the overall and per-class tables, the most confused pairs, the plots
    ({title: path}) and the most confident mistakes."""
    lines = [f"# Evaluation report: {report.get('split', 'eval')} split", ""]
    for key in ("model", "data", "epoch"):
        if key in report:
            lines.append(f"- {key}: `{report[key]}`")
    lines += ["", "| metric | value |", "|---|---|"]
    labels = {
        "samples": "images",
        "accuracy": "accuracy (top-1)",
        "top5_accuracy": "top-5 accuracy",
        "balanced_accuracy": "balanced accuracy (mean recall)",
        "macro_f1": "macro F1",
        "loss": "cross-entropy loss",
        "ece": "expected calibration error (15 bins)",
    }
    lines += [f"| {labels[k]} | {_fmt(v)} |" for k, v in report["overall"].items()]
    lines += [
        "",
        "## Per class",
        "",
        "| class | support | precision | recall | F1 |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {c['class']} | {c['support']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} |"
        for c in report["per_class"]
    ]
    if report["most_confused"]:
        lines += ["", "## Most confused", "", "| true | predicted as | images |", "|---|---|---:|"]
        lines += [
            f"| {p['true']} | {p['predicted']} | {p['count']} |" for p in report["most_confused"]
        ]
    if plot_files:
        lines += ["", "## Plots", ""]
        lines += [f"### {title}\n\n![{title}]({path})\n" for title, path in plot_files.items()]
    if report["confident_mistakes"]:
        lines += [
            "## Most confident mistakes",
            "",
            "| image | true | predicted | confidence |",
            "|---|---|---|---:|",
        ]
        lines += [
            f"| {m['path']} | {m['true']} | {m['predicted']} | {m['confidence']:.1%} |"
            for m in report["confident_mistakes"]
        ]
    return "\n".join(lines) + "\n"


def write_report(
    folder: Path,
    result: dict,
    class_names: Sequence[str],
    mistakes: list[dict],
    extra_plots: dict[str, str] | None = None,
    **context: Any,
) -> dict[str, Path]:
    """report.json, report.md, plots/confusion_matrix.png and plots/mistakes.png under `folder`.

    `extra_plots` ({title: path relative to folder}) are linked from report.md too.
    Returns the PNGs written, by name."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {
        "confusion_matrix": plots.confusion_matrix(
            result["confusion_matrix"], class_names, folder / "plots" / "confusion_matrix.png"
        ),
        "mistakes": plots.mistakes_gallery(
            mistakes, class_names, folder / "plots" / "mistakes.png"
        ),
    }
    report = build_report(result, class_names, mistakes, **context)
    (folder / "report.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    links = {
        **(extra_plots or {}),
        "confusion matrix": "plots/confusion_matrix.png",
        "most confident mistakes": "plots/mistakes.png",
    }
    (folder / "report.md").write_text(render_markdown(report, links), encoding="utf-8")
    return written
