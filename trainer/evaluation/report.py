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

from trainer.evaluation import calibration, curves, decision_plots, plots
from trainer.files import write_text_atomic

MISTAKES_SHOWN = 16
# The plots of report.decisions, relative to the report's folder.
DECISION_PLOTS = {
    "reliability": "plots/reliability.png",
    "roc_pr": "plots/roc_pr.png",
    "coverage": "plots/coverage.png",
}


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


def decisions(
    logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], temperature: float
) -> dict[str, Any]:
    """What a threshold is chosen from, for one split: calibration before/after T, per-class
    ROC and PR, coverage vs accuracy and, for two classes, the positive class's thresholds;
    on the probabilities `predict` gives, calibration.probabilities(logits, temperature)."""
    probs = calibration.probabilities(logits, temperature)
    out = {
        "calibration": calibration.summary(logits, labels, temperature),
        "roc_pr": curves.roc_pr(probs, labels, class_names),
        "coverage": curves.coverage(probs, labels),
    }
    if len(class_names) == 2:
        out["thresholds"] = curves.binary_thresholds(probs, labels, class_names)
    return out


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _na(v: float | None, pattern: str = "{:.4f}") -> str:
    return "n/a" if v is None else pattern.format(v)


def _calibration_md(cal: dict) -> list[str]:
    t = cal["temperature"]
    return [
        "## Calibration",
        "",
        f"Temperature scaling divides the logits by T = {t:.4g} before the softmax (T is "
        "fitted on the val split after training; with one view per image it changes no top-1 "
        "answer). Lower is better for both: NLL is the mean -log of the probability given to "
        "the true class; ECE the gap between confidence and accuracy, so with a small ECE an "
        "answer given with 0.9 is right about 9 times in 10.",
        "",
        f"| on this split | before (T = 1) | after (T = {t:.4g}) |",
        "|---|---:|---:|",
        f"| negative log-likelihood | {cal['nll_before']:.4f} | {cal['nll_after']:.4f} |",
        f"| expected calibration error (15 bins) | {cal['ece_before']:.4f} "
        f"| {cal['ece_after']:.4f} |",
        "",
        f"![reliability diagram]({DECISION_PLOTS['reliability']})",
        "",
    ]


def _coverage_md(cov: dict) -> list[str]:
    lines = [
        "## Coverage",
        "",
        "Answering only the images whose top (calibrated) probability is at least P, as "
        "`trainer predict --min-confidence P` does (it writes `unknown` for the others): how "
        "many are answered and how accurate those answers are. Pick P from this table.",
        "",
        "| P | answered | share | accuracy of the answered |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['threshold']:g}{' (all)' if r['threshold'] == 0 else ''} | {r['answered']} "
        f"| {r['share']:.1%} | {_na(r['accuracy'])} |"
        for r in cov["table"]
    ]
    return lines + ["", f"![coverage vs accuracy]({DECISION_PLOTS['coverage']})", ""]


def _roc_pr_md(roc: dict) -> list[str]:
    lines = [
        "## ROC and precision-recall",
        "",
        "Each class against the rest, on the calibrated probabilities: ROC-AUC 1 ranks every "
        "image of the class above the others, 0.5 is chance; PR-AUC (average precision) is "
        "the one to read for a rare class. n/a: the split has no image of the class, or only "
        "images of it.",
        "",
        "| class | images | ROC-AUC | PR-AUC |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['class']} | {r['positives']} | {_na(r['roc_auc'])} | {_na(r['pr_auc'])} |"
        for r in roc["per_class"]
    ]
    lines.append(
        f"| macro mean ({roc['classes_defined']} classes) | | {_na(roc['macro_roc_auc'])} "
        f"| {_na(roc['macro_pr_auc'])} |"
    )
    return lines + ["", f"![ROC and precision-recall]({DECISION_PLOTS['roc_pr']})", ""]


def _thresholds_md(th: dict) -> list[str]:
    name = th["positive"]
    lines = [
        f"## Thresholds for {name}",
        "",
        f"Two classes: `{name}` (the second class) is the positive one. Calling an image "
        f"`{name}` when its probability of `{name}` is at least t ({th['positives']} images "
        f"of this split are `{name}`); n/a: no image called `{name}`.",
        "",
        f"| t | called {name} | precision | recall |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['threshold']:g} | {r['predicted_positive']} | {_na(r['precision'])} "
        f"| {_na(r['recall'])} |"
        for r in th["table"]
    ]
    return lines + [""]


def _decisions_md(report: dict) -> list[str]:
    """The sections of report.decisions, where the report has them."""
    lines = [""]
    if "calibration" in report:
        lines += _calibration_md(report["calibration"])
    if "coverage" in report:
        lines += _coverage_md(report["coverage"])
    if "roc_pr" in report:
        lines += _roc_pr_md(report["roc_pr"])
    if "thresholds" in report:
        lines += _thresholds_md(report["thresholds"])
    return lines[:-1] if len(lines) > 1 else []


def render_markdown(report: dict, plot_files: dict[str, str]) -> str:
    """report.md: the overall and per-class tables, the most confused pairs, the sections of
    report.decisions where the report holds them, the plots ({title: path}) and the most
    confident mistakes."""
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
    lines += _decisions_md(report)
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


def _decision_plots(folder: Path, decisions: dict) -> dict[str, Path]:
    draw = {
        "reliability": (decision_plots.reliability, decisions["calibration"]),
        "roc_pr": (decision_plots.roc_pr, decisions["roc_pr"]),
        "coverage": (decision_plots.coverage, decisions["coverage"]),
    }
    return {name: plot(data, folder / DECISION_PLOTS[name]) for name, (plot, data) in draw.items()}


def write_report(
    folder: Path,
    result: dict,
    class_names: Sequence[str],
    mistakes: list[dict],
    extra_plots: dict[str, str] | None = None,
    decisions: dict | None = None,
    **context: Any,
) -> dict[str, Path]:
    """report.json, report.md, plots/confusion_matrix.png and plots/mistakes.png under `folder`.

    `extra_plots` ({title: path relative to folder}) are linked from report.md too.
    `decisions` (report.decisions' dict) adds its sections to report.json and report.md, and
    the plots reliability.png, roc_pr.png and coverage.png. Returns the PNGs written, by name."""
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
    if decisions is not None:
        report.update(decisions)
        written.update(_decision_plots(folder, decisions))
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
