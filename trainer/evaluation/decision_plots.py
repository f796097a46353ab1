"""The plots that help choose a threshold: reliability diagram, ROC and precision-recall,
accuracy vs coverage. They draw the numbers of report.decisions (report.json), nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from trainer.evaluation.plots import _save, display_names, margins


def reliability(calibration: dict[str, Any], out: Path) -> Path:
    """Accuracy vs mean confidence per confidence bin, before and after temperature scaling,
    against the diagonal (perfect calibration); each bar says how many images it holds."""
    fig = Figure(figsize=(12, 5))
    axes = fig.subplots(1, 2, sharey=True)
    margins(fig, left=0.7, right=0.2, bottom=0.6, top=0.4, gap=0.3)
    t = calibration["temperature"]
    for ax, when, title in zip(axes, ("before", "after"), ("raw softmax (T = 1)", f"T = {t:.3g}")):
        bins = [b for b in calibration["reliability"][when] if b["samples"]]
        width = bins[0]["upper"] - bins[0]["lower"] if bins else 0.0
        centers = [(b["lower"] + b["upper"]) / 2 for b in bins]
        ax.bar(
            centers,
            [b["accuracy"] for b in bins],
            width=width * 0.9,
            alpha=0.7,
            edgecolor="black",
            label="accuracy in the bin",
        )
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            "o",
            color="C3",
            markersize=4,
            label="(mean confidence, accuracy)",
        )
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfectly calibrated")
        for x, b in zip(centers, bins):
            ax.text(
                x, b["accuracy"] + 0.01, str(b["samples"]), ha="center", va="bottom", fontsize=7
            )
        ax.set_xlim(0, 1.01)  # a bin's mean confidence can be 1.0
        ax.set_ylim(0, 1.08)
        ax.set_xlabel("confidence (top probability)")
        ax.set_title(
            f"{title}: ECE {calibration[f'ece_{when}']:.4f}, NLL {calibration[f'nll_{when}']:.4f}"
        )
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (numbers: images in the bin)")
    axes[0].legend(loc="upper left", fontsize=8)
    return _save(fig, out)


def roc_pr(roc: dict[str, Any], out: Path) -> Path:
    """ROC and precision-recall curves side by side, one line per class with its AUC; with
    more classes than curves the title says which are drawn (those of lowest ROC-AUC)."""
    by_name = {row["class"]: row for row in roc["per_class"]}
    curves = roc["curves"]
    names, font, note = display_names([c["class"] for c in curves])
    fig = Figure(figsize=(12, 5.5))
    ax_roc, ax_pr = fig.subplots(1, 2)
    margins(fig, left=0.7, right=0.2, bottom=0.6, top=0.6 + 0.4 * bool(note))
    for curve, name in zip(curves, names):
        row = by_name[curve["class"]]
        ax_roc.plot(curve["fpr"], curve["tpr"], label=f"{name} ({row['roc_auc']:.3f})")
        ax_pr.plot(
            curve["recall"],
            curve["precision"],
            drawstyle="steps-post",  # as scikit-learn draws it: precision holds until the next recall
            label=f"{name} ({row['pr_auc']:.3f})",
        )
    ax_roc.plot([0, 1], [0, 1], "--", color="gray", linewidth=1)
    ax_roc.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title="ROC, one class vs the rest (AUC)",
    )
    ax_pr.set(
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title="precision-recall (average precision)",
    )
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(fontsize=8, prop=font, loc="lower right" if ax is ax_roc else "best")
    shown = len(curves)
    if shown < len(roc["per_class"]):
        title = (
            f"the {shown} classes of lowest ROC-AUC of {len(roc['per_class'])} "
            f"(all AUCs in report.json)"
        )
    else:
        title = f"all {shown} classes"
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=10)
    return _save(fig, out)


def coverage(cov: dict[str, Any], out: Path) -> Path:
    """Accuracy of the answered images vs the share answered, as the top-probability threshold
    rises; the coverage table's thresholds are marked."""
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    margins(fig, left=0.8, right=0.2, bottom=0.6, top=0.4)
    curve = cov["curve"]
    ax.plot(curve["share"], curve["accuracy"], "-", label="answer the most confident first")
    for row in cov["table"]:
        if row["answered"]:
            ax.plot(row["share"], row["accuracy"], "o", color="C3", markersize=5)
            ax.annotate(
                f"≥ {row['threshold']:g}",
                (row["share"], row["accuracy"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
    ax.set(
        xlim=(0, 1.08),
        xlabel="share of images answered (coverage)",
        ylabel="accuracy of the answered images",
        title=f"coverage vs accuracy ({cov['images']} images; dots: --min-confidence)",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, out)
