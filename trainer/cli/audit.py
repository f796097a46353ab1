"""`trainer audit`: duplicates, train/test leakage, suspected label errors and outliers of a folder.

Runs on one process or many (`accelerate launch -m trainer audit ...`: the embeddings are
sharded); only the main process writes and prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.cli.args import (
    BATCH,
    WORKERS,
    add_layout_arg,
    collector_paused,
    count,
    is_main,
    layout_as_flag,
)

DEFAULT_THRESHOLD = (
    0.70  # = trainer.audit.duplicates.NEAR_THRESHOLD (not imported: torch-free here)
)


def _similarity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a cosine similarity in (0, 1], got {value}")
    return value


def add_audit(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "audit",
        help="find duplicates, train/test leakage, suspected label errors and outliers in a folder",
        description="Writes audit.md, audit.json, duplicates.csv, label_issues.csv, outliers.csv "
        "and PNG galleries to --out; never writes inside DATA.",
    )
    p.add_argument("data_dir", metavar="DATA", help="class sub-folders, or a pre-split folder")
    p.add_argument(
        "--model",
        default="torchvision/resnet50",
        help="the embeddings' backbone: a model folder (RUN_DIR/model) or a backbone name with "
        "pretrained weights cached (default: torchvision/resnet50)",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default: ./audit-<DATA's name>)")
    add_layout_arg(p)
    p.add_argument(
        "--threshold",
        type=_similarity,
        default=DEFAULT_THRESHOLD,
        help=f"cosine similarity from which two images are near-duplicates (default: "
        f"{DEFAULT_THRESHOLD}, calibrated: see README)",
    )
    p.add_argument(
        "--folds", type=count(2, 20), default=5, help="folds of the label check (default: 5)"
    )
    p.add_argument("--batch-size", type=BATCH, default=64)
    p.add_argument("--num-workers", type=WORKERS, default=None)


def cmd_audit(args: argparse.Namespace) -> int:
    from trainer.audit.outputs import check_out

    with collector_paused():
        from trainer.audit.run import AuditOptions, run_audit, summary_lines

    data = Path(args.data_dir)
    out = Path(args.out) if args.out else Path(f"audit-{data.expanduser().resolve().name}")
    check_out(out, data)  # before any work: a refusal changes nothing
    opts = AuditOptions(
        data=args.data_dir,
        model=args.model,
        out=out,
        layout=args.layout,
        threshold=args.threshold,
        folds=args.folds,
        batch_size=args.batch_size,
        workers=args.num_workers,
    )
    with layout_as_flag():
        summary = run_audit(opts)
    if summary is not None and is_main():
        for bad in summary["skipped_files"]:  # as eval and predict name them
            print(f"skipped unreadable image {bad['path']}: {bad['reason']}", file=sys.stderr)
        print("\n".join(summary_lines(summary, out)))
    return 0
