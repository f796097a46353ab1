"""What does an audit leave on disk: audit.json, audit.md, the CSVs and the galleries in --out, and
which folders it may write over (only one an audit wrote before).

Paths in the files are relative to the image root, so an audit folder can be read on another
machine. Each file is written whole (temp file + rename).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from trainer.files import check_replaceable, read_json_or_none, write_text_atomic

AUDIT_FORMAT = "trainer-audit"
CSVS = ("duplicates.csv", "label_issues.csv", "outliers.csv")
GALLERIES = ("duplicates.png", "label_issues.png", "outliers.png")
AUDIT_NAMES = {"audit.json", "audit.md", *CSVS, *GALLERIES}


def is_audit_folder(folder: Path) -> bool:
    """A folder `trainer audit` wrote: its files only, and audit.json of the audit's format."""
    names = {p.name for p in folder.iterdir()}
    if "audit.json" not in names or not names <= AUDIT_NAMES:
        return False
    path = folder / "audit.json"
    doc = read_json_or_none(path) if path.is_file() else None
    return isinstance(doc, dict) and doc.get("format") == AUDIT_FORMAT


def check_out(out: Path, data: Path) -> None:
    """Refuse, before any work, an --out inside the data folder (the audit never writes among
    the user's images) or one holding files the audit did not write."""
    out_abs, data_abs = out.expanduser().resolve(), data.expanduser().resolve()
    if out_abs == data_abs or data_abs in out_abs.parents:
        from trainer.files import OutputError

        raise OutputError(
            f"--out {out}: is inside the data folder {data}; the audit never writes among the "
            "images: choose a folder outside it"
        )
    check_replaceable(out, "--out", is_audit_folder, "an audit folder", folder=True)


def relative(path: str, root: Path) -> str:
    return os.path.relpath(path, root)


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def duplicates_csv(pairs: list[dict], paths: list[str], splits: list[str], root: Path) -> str:
    """One pair per row: cross-split pairs first, then by similarity."""
    rows = [
        [
            relative(paths[p["a"]], root),
            relative(paths[p["b"]], root),
            splits[p["a"]],
            splits[p["b"]],
            f"{p['similarity']:.4f}",
            p["kind"],
            p["splits"],
        ]
        for p in pairs
    ]
    header = ["path_a", "path_b", "split_a", "split_b", "similarity", "kind", "splits"]
    return _csv_text(header, rows)


def label_issues_csv(suspects: list[dict], paths, splits, class_names, root: Path) -> str:
    """One image per row, most suspicious first (the order `labels.suspects` gives)."""
    rows = [
        [
            relative(paths[s["row"]], root),
            splits[s["row"]],
            class_names[s["given"]],
            class_names[s["suggested"]],
            f"{s['p_given']:.4f}",
            f"{s['p_suggested']:.4f}",
        ]
        for s in suspects
    ]
    header = ["path", "split", "given", "suggested", "p_given", "p_suggested"]
    return _csv_text(header, rows)


def outliers_csv(outliers: list[dict], paths, splits, labels, class_names, root: Path) -> str:
    """One finding per row: embedding outliers (with their score), then odd images."""
    rows = [
        [
            relative(paths[o["row"]], root),
            splits[o["row"]],
            class_names[int(labels[o["row"]])],
            o["reason"],
            "" if o.get("score") is None else f"{o['score']:.4f}",
        ]
        for o in outliers
    ]
    return _csv_text(["path", "split", "label", "reason", "score"], rows)


def write_files(out: Path, texts: dict[str, str]) -> None:
    """Write each file whole and remove what an earlier audit left that this one did not write
    (a gallery with nothing to show this time)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        write_text_atomic(out / name, text)


def remove_stale(out: Path, written: set[str]) -> None:
    for name in AUDIT_NAMES - written:
        path = out / name
        if path.is_file():
            path.unlink()


def audit_json(summary: dict[str, Any]) -> str:
    return json.dumps({"format": AUDIT_FORMAT, "version": 1, **summary}, indent=2) + "\n"


SHOWN = 20  # rows of each finding listed in audit.md; the CSVs hold them all


def audit_md(summary: dict[str, Any], found: dict[str, Any], rows, root: Path) -> str:
    """audit.md: the numbers, the first rows of each finding, and what to do about them."""
    dup, leak = summary["duplicates"], summary["duplicates"]["leakage"]
    images = ", ".join(f"{k} {v}" for k, v in summary["images"].items())
    lines = [
        f"# Audit of {summary['data']}",
        "",
        f"- images: {images}; classes: {len(summary['classes'])}; bad files left out: "
        f"{summary['bad_files']}",
        f"- embeddings: {summary['model']}",
        f"- duplicates: {dup['exact_groups']} exact groups, {dup['near_pairs']} near pairs "
        f"(cosine similarity >= {dup['threshold']}), {dup['cross_split_pairs']} pairs across "
        f"splits, {dup['groups']} groups",
        f"- leakage: {leak['test_in_train']} test and {leak['val_in_train']} val images have a "
        f"copy in train; {leak['test_in_val']} test images have one in val",
        f"- suspected label errors: {summary['label_issues']['suspects']} "
        f"({summary['label_issues']['folds']}-fold out-of-sample probabilities)",
        f"- outliers and odd images: {summary['outliers']}",
        "",
        "## Duplicates (duplicates.csv, duplicates.png)",
        "",
        "Cross-split pairs inflate val/test numbers: remove one of each pair, or split with "
        "data.group_duplicates=true. Same-split pairs weigh an image twice.",
        "",
        "| a | b | splits | similarity | kind |",
        "|---|---|---|---|---|",
    ]
    p, s = rows.paths, rows.splits
    for d in found["pairs"][:SHOWN]:
        a, b = relative(p[d["a"]], root), relative(p[d["b"]], root)
        lines.append(
            f"| {a} | {b} | {s[d['a']]}/{s[d['b']]} | {d['similarity']:.3f} | {d['kind']} |"
        )
    lines += [
        "",
        "## Suspected label errors (label_issues.csv, label_issues.png)",
        "",
        "Look at each: fix the folder it is in, or remove it if it belongs to no class.",
        "",
        "| image | given | suggested | p(given) | p(suggested) |",
        "|---|---|---|---|---|",
    ]
    names = rows.class_names
    for x in found["suspects"][:SHOWN]:
        lines.append(
            f"| {relative(p[x['row']], root)} | {names[x['given']]} | {names[x['suggested']]} "
            f"| {x['p_given']:.3f} | {x['p_suggested']:.3f} |"
        )
    lines += ["", "## Outliers and odd images (outliers.csv, outliers.png)", ""]
    lines += ["Images unlike every class, or very dark, bright, blurry, tiny or oddly shaped.", ""]
    lines += [f"- {relative(p[o['row']], root)}: {o['reason']}" for o in found["outliers"][:SHOWN]]
    lines += ["", "## Class balance (images per class and split)", "", *balance_table(summary)]
    return "\n".join(lines) + "\n"


def balance_table(summary: dict[str, Any]) -> list[str]:
    """A markdown table: a row per class, a column per split, then largest/smallest per split."""
    balance = summary["class_balance"]
    splits = list(balance)
    lines = [f"| class | {' | '.join(splits)} |", "|---" * (len(splits) + 1) + "|"]
    for name in summary["classes"]:
        lines.append(
            f"| {name} | " + " | ".join(str(balance[s]["counts"][name]) for s in splits) + " |"
        )
    ratios = ["-" if balance[s]["ratio"] is None else f"{balance[s]['ratio']:g}" for s in splits]
    lines.append(f"| largest / smallest | {' | '.join(ratios)} |")
    return lines
