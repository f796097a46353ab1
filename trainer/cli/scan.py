"""`trainer scan`: what training would make of an image folder, before any training.

The layout, images per class and split, and the files training would skip, as a table or JSON.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.cli.args import add_layout_arg, count, layout_as_flag

if TYPE_CHECKING:
    from trainer.config import DataConfig
    from trainer.data.splits import DataIndex


def add_scan(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "scan",
        help="check an image folder before training: layout, classes, bad files",
        description="Index DATA_DIR as training would and fully decode every image (in parallel, "
        "cached): prints the layout, images per class and split, and the files training would "
        "skip (empty, truncated, not an image, over the pixel limit) with the reason.",
    )
    p.add_argument("data_dir", help="class sub-folders, or train/ val/ test/ splits of them")
    add_layout_arg(p)
    p.add_argument(
        "--json", metavar="FILE|-", help="also write the report as JSON ('-': stdout only)"
    )
    p.add_argument(
        "--workers",
        type=count(1, 1024),
        default=None,
        help="decoding processes (default: all CPUs)",
    )
    p.add_argument(
        "--max-image-pixels",
        type=count(1, 2**34),
        default=None,
        metavar="N",
        help="images with more pixels are bad (data.max_image_pixels; default: Pillow's limit)",
    )


def cmd_scan(args: argparse.Namespace) -> int:
    import json

    from trainer.config import DataConfig
    from trainer.data.layout import DataError
    from trainer.data.splits import scan

    if not Path(args.data_dir).expanduser().is_dir():
        raise DataError(f"{args.data_dir!r} is not a folder")
    if args.json and args.json != "-":
        from trainer.files import check_replaceable

        check_replaceable(
            Path(args.json), "--json", _is_scan_json, "a report written by trainer scan --json"
        )
    cfg = DataConfig(root=args.data_dir, layout=args.layout, max_image_pixels=args.max_image_pixels)
    with layout_as_flag():
        report = _scan_report(scan(cfg, workers=args.workers), cfg)
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.json == "-":
        print(text)
        return 0
    _print_scan_report(report)
    if args.json:
        from trainer.files import write_text_atomic

        write_text_atomic(Path(args.json), text + "\n")
        print(f"report -> {args.json}")
    return 0


def _is_scan_json(path: Path) -> bool:
    from trainer.files import read_json_or_none

    report = read_json_or_none(path)
    return isinstance(report, dict) and {"root", "layout", "classes", "counts"} <= set(report)


def _scan_report(index: DataIndex, cfg: DataConfig) -> dict:
    """What `trainer scan` prints, as JSON-ready data; paths relative to the image root."""
    splits = list(index.splits)
    return {
        "root": str(index.root.resolve()),
        "layout": index.layout,
        "split": cfg.split if index.layout == "ratio-split" else None,
        "split_seed": cfg.split_seed if index.layout == "ratio-split" else None,
        "classes": index.class_names,
        "counts": {s: dict(zip(index.class_names, index.class_counts(s))) for s in splits},
        "bad_files": [
            {"path": os.path.relpath(p, index.root), "reason": r} for p, r in index.bad_files
        ],
        "ignored": [os.path.relpath(p, index.root) for p in index.ignored],
        "notes": index.notes,
    }


def _print_scan_report(report: dict) -> None:
    layout = report["layout"]
    if report["split"]:
        layout += f" by data.split {report['split']} with data.split_seed {report['split_seed']}"
    print(f"{report['root']}: {layout}, {len(report['classes'])} classes")
    counts, splits = report["counts"], list(report["counts"])
    width = max(len(c) for c in [*report["classes"], "class"])
    print(f"{'class':{width}} " + " ".join(f"{s:>7}" for s in splits) + f" {'total':>7}")
    for c in [*report["classes"], "total"]:
        row = [counts[s][c] if c != "total" else sum(counts[s].values()) for s in splits]
        print(f"{c:{width}} " + " ".join(f"{n:7d}" for n in row) + f" {sum(row):7d}")
    bad = report["bad_files"]
    print(
        f"bad files: {len(bad)}"
        + (" (training leaves them out; with data.on_bad_file=error it stops)" if bad else "")
    )
    for b in bad:
        print(f"  {b['path']}: {b['reason']}")
    for note in report["notes"]:
        print(f"note: {note}")
