"""`trainer audit`: what is wrong with a folder of labelled images before a number is trusted.

scan (the runner's own index, splits and bad files) -> embeddings of every image (sharded over
the processes of a launch, gathered on all) -> exact and near duplicates within and across
splits -> suspected label errors, outliers, odd images, class balance -> the main process writes
audit.json, audit.md, the CSVs and the galleries, and the duplicate groups for training
(`data.group_duplicates`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer import runtime
from trainer.audit import duplicates, outputs
from trainer.audit.embed import Rows, all_hashes, embed, load_backbone, rows_of
from trainer.config import DataConfig
from trainer.data.groups import write_groups
from trainer.data.loaders import auto_num_workers
from trainer.data.splits import scan


@dataclass
class AuditOptions:
    data: str
    model: str
    out: Path
    layout: str = "auto"
    threshold: float = duplicates.NEAR_THRESHOLD
    folds: int = 5
    batch_size: int = 64
    workers: int | None = None


def run_audit(opts: AuditOptions) -> dict[str, Any] | None:
    """The whole audit on every process of a launch; the summary on the main process (None on
    the others, which only embed their share)."""
    accelerator = runtime.make_accelerator()
    try:
        start = time.perf_counter()
        backbone, pre, source = load_backbone(opts.model)  # a wrong --model stops before the scan
        with accelerator.main_process_first():  # the others read the scan's cached verdicts
            index = scan(DataConfig(root=opts.data, layout=opts.layout))
        rows = rows_of(index)
        workers = auto_num_workers(opts.workers, runtime.local_world_size(accelerator))
        emb = embed(rows, backbone, pre, opts.batch_size, workers, accelerator)
        if not accelerator.is_main_process:
            return None
        found = analyse(rows, emb, opts, accelerator)
        summary = summarize(index, rows, found, opts, source)
        write_outputs(opts.out, index.root, rows, found, summary)
        write_groups(
            index.root,
            [[rows.paths[r] for r in g] for g in found["groups"]],
            sum(p["splits"] == "cross" for p in found["pairs"]),
        )
        summary["seconds"] = round(time.perf_counter() - start, 1)
        return summary
    finally:
        runtime.shutdown(accelerator)


def analyse(rows: Rows, emb: np.ndarray, opts: AuditOptions, accelerator) -> dict[str, Any]:
    """Every finding, by row number of `rows`."""
    from trainer.audit import labels, outliers

    exact = duplicates.exact_groups(all_hashes(rows.paths, accelerator))
    near = duplicates.near_pairs(duplicates.whiten(emb), opts.threshold)
    pairs = duplicates.all_pairs(exact, near, rows.splits)
    n_classes = len(rows.class_names)
    stats = outliers.image_stats(rows.paths)
    by_split = {
        s: rows.labels[[i for i, x in enumerate(rows.splits) if x == s]]
        for s in dict.fromkeys(rows.splits)
    }
    return {
        "exact": exact,
        "pairs": pairs,
        "groups": duplicates.groups_of(pairs, len(rows.paths)),
        "leakage": duplicates.leakage(pairs, rows.splits),
        "suspects": labels.suspects(emb, rows.labels, n_classes, folds=opts.folds),
        "outliers": outliers.embedding_outliers(emb, rows.labels, rows.class_names)
        + outliers.odd_images(stats),
        "balance": outliers.class_balance(by_split, rows.class_names),
    }


def summarize(index, rows: Rows, found: dict, opts: AuditOptions, source: str) -> dict[str, Any]:
    """audit.json's content (paths relative to the image root)."""
    pairs = found["pairs"]
    return {
        "data": str(index.root),
        "model": source,
        "images": index.counts(),
        "classes": rows.class_names,
        "bad_files": len(index.bad_files),
        "skipped_files": [  # left out by the scan, as training leaves them out
            {"path": os.path.relpath(p, index.root), "reason": reason}
            for p, reason in index.bad_files
        ],
        "duplicates": {
            "threshold": opts.threshold,
            "exact_groups": len(found["exact"]),
            "pairs": len(pairs),
            "near_pairs": sum(p["kind"] == "near" for p in pairs),
            "cross_split_pairs": sum(p["splits"] == "cross" for p in pairs),
            "groups": len(found["groups"]),
            "leakage": found["leakage"],
        },
        "label_issues": {"suspects": len(found["suspects"]), "folds": opts.folds},
        "outliers": len(found["outliers"]),
        "class_balance": found["balance"],
    }


def write_outputs(out: Path, root: Path, rows: Rows, found: dict, summary: dict) -> None:
    """The CSVs, audit.json, audit.md and the galleries that have something to show."""
    from trainer.audit import galleries

    p, s, names = rows.paths, rows.splits, rows.class_names
    texts = {
        "duplicates.csv": outputs.duplicates_csv(found["pairs"], p, s, root),
        "label_issues.csv": outputs.label_issues_csv(found["suspects"], p, s, names, root),
        "outliers.csv": outputs.outliers_csv(found["outliers"], p, s, rows.labels, names, root),
        "audit.json": outputs.audit_json(summary),
        "audit.md": outputs.audit_md(summary, found, rows, root),
    }
    outputs.write_files(out, texts)
    pairs = [(d["a"], d["b"], d["similarity"]) for d in found["pairs"]]
    made = [
        galleries.duplicates_png(pairs, p, out / "duplicates.png", s),
        galleries.suspects_png(found["suspects"], p, names, out / "label_issues.png"),
        galleries.outliers_png(found["outliers"], p, out / "outliers.png"),
    ]
    outputs.remove_stale(out, set(texts) | {Path(m).name for m in made if m is not None})


def summary_lines(summary: dict[str, Any], out: Path) -> list[str]:
    """The few lines `trainer audit` prints."""
    images = summary["images"]
    dup, leak = summary["duplicates"], summary["duplicates"]["leakage"]
    split_counts = ", ".join(f"{k} {v}" for k, v in images.items())
    lines = [
        f"audited {sum(images.values())} images ({split_counts}) with {summary['model']} "
        f"in {summary['seconds']:.1f}s",
        f"duplicates: {dup['exact_groups']} exact groups, {dup['near_pairs']} near pairs "
        f"(similarity >= {dup['threshold']}), {dup['cross_split_pairs']} pairs across splits",
    ]
    for key, (a, b) in {
        "test_in_train": ("test", "train"),
        "val_in_train": ("val", "train"),
        "test_in_val": ("test", "val"),
    }.items():
        if leak.get(key):
            lines.append(f"leakage: {leak[key]} {a} images have a near-copy in {b}")
    if dup["near_pairs"] > sum(images.values()):
        lines.append(
            "note: more near pairs than images: the backbone sees the images of a class as alike "
            "(a model trained on few classes does); look at duplicates.csv, raise --threshold, "
            "or audit with a pretrained backbone"
        )
    lines.append(f"label issues: {summary['label_issues']['suspects']} suspected")
    lines.append(f"outliers and odd images: {summary['outliers']}")
    lines.append(
        f"-> {out}/audit.md (and audit.json, duplicates.csv, label_issues.csv, outliers.csv)"
    )
    return lines
