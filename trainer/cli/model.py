"""`trainer eval`, `predict` and `weights`: what a user does with a model folder.

eval and predict run on every process of a launch (the evaluation is shared); only the main
process prints and writes.
"""

from __future__ import annotations

import argparse
import contextlib
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


def add_eval(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("eval", help="metrics of a model folder on a labelled image folder")
    p.add_argument("model_dir", help="a model folder (RUN_DIR/model)")
    p.add_argument("data_dir", help="class sub-folders, or a pre-split folder")
    p.add_argument(
        "--split",
        default="auto",
        help="train, val or test of a pre-split folder (default: test, else val)",
    )
    add_layout_arg(p)
    p.add_argument("--batch-size", type=BATCH, default=128)
    p.add_argument("--num-workers", type=WORKERS, default=None)
    p.add_argument("--json", metavar="FILE", help="also write all metrics as JSON")
    p.add_argument(
        "--report",
        metavar="DIR",
        help="also write report.json, report.md, predictions.csv and plots (confusion matrix, "
        "mistakes, reliability, ROC/PR, coverage vs accuracy) to DIR",
    )
    add_inference_args(p)


def add_inference_args(p: argparse.ArgumentParser) -> None:
    """--no-calibration and --tta of eval and predict."""
    p.add_argument(
        "--no-calibration",
        action="store_true",
        help="raw softmax probabilities: ignore the temperature fitted on val (model config.json)",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the probabilities of the center crop, the 4 corner "
        "crops and the mirrors training used (5-7 forwards per image; lower --batch-size if "
        "memory is short)",
    )


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from trainer.errors import writing
    from trainer.evaluation.outputs import check_outputs
    from trainer.files import write_text_atomic

    with collector_paused():
        from trainer.evaluation.folder_eval import evaluate_folder, not_pre_split_note

    check_outputs(json_out=args.json, report_dir=args.report)  # before any work
    # A full disk while writing the report names its folder (the files are written inside).
    with writing(args.report) if args.report else contextlib.nullcontext(), layout_as_flag():
        result = evaluate_folder(
            args.model_dir,
            args.data_dir,
            args.split,
            args.batch_size,
            args.num_workers,
            args.report,
            args.layout,
            calibrated=not args.no_calibration,
            tta=args.tta,
        )
    if not is_main():
        return 0
    _print_skipped([(b["path"], b["reason"]) for b in result["bad_files"]])
    note = not_pre_split_note(args.model_dir, args.data_dir, args.layout)
    if note:
        print(f"note: {note}", file=sys.stderr)
    _print_metrics(result, args.no_calibration)
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def _print_metrics(result: dict, raw: bool) -> None:
    """eval's table: how the probabilities were made (when not the plain softmax of one view),
    the totals, then support and accuracy per class."""
    for line in inference_lines(result["temperature"], result["tta_views"], raw):
        print(line)
    print(
        f"samples {result['samples']}  accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}",
        end="",
    )
    print(f"  top5 {result['top5_accuracy']:.4f}" if "top5_accuracy" in result else "")
    print(f"{'class':24} {'support':>8} {'accuracy':>9}")
    for name, n, acc in zip(result["class_names"], result["support"], result["per_class_accuracy"]):
        print(f"{name:24} {n:8d} {'-' if acc is None else format(acc, '.4f'):>9}")
    if result["bad_files"]:
        n_bad = len(result["bad_files"])
        print(f"{n_bad} unreadable files skipped (listed on stderr; not in the numbers)")


def inference_lines(temperature: float, views: list[str], raw: bool) -> list[str]:
    """What eval and predict say about their probabilities when they are not one view's plain
    softmax: calibrated (`temperature` T) or `raw` (--no-calibration), and TTA's views."""
    lines = []
    if raw:
        lines.append("raw softmax probabilities (--no-calibration)")
    elif temperature != 1.0:
        lines.append(
            f"probabilities calibrated: softmax(logits / {temperature:.4g}) "
            "(--no-calibration for the raw softmax)"
        )
    if views:
        lines.append(f"test-time augmentation: {len(views)} views averaged ({', '.join(views)})")
    return lines


def _print_skipped(bad: list[tuple[str, str]]) -> None:
    for path, reason in bad:
        print(f"skipped unreadable image {path}: {reason}", file=sys.stderr)


def add_predict(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "predict", help="top-k labels for image files or folders, as CSV or JSON"
    )
    p.add_argument("model_dir", help="a model folder (RUN_DIR/model)")
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)"
    )
    p.add_argument(
        "--out",
        default="predictions.csv",
        help="output file; .json for JSON (default: predictions.csv)",
    )
    p.add_argument(
        "--topk", type=count(1, 10**6), default=1, help="labels per image, best first (default: 1)"
    )
    p.add_argument(
        "--min-confidence",
        type=probability,
        metavar="P",
        help="label an image --unknown-label when its top probability is below P (0..1); its "
        "probability and the other top-k columns stay (pick P from the report's coverage table)",
    )
    p.add_argument(
        "--unknown-label",
        type=label_word,
        default="unknown",
        metavar="NAME",
        help="the label --min-confidence writes (default: unknown); must not be a class name",
    )
    p.add_argument("--batch-size", type=BATCH, default=64)
    p.add_argument("--num-workers", type=WORKERS, default=None)
    add_inference_args(p)


def probability(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a probability in [0, 1], got {text!r}"
        ) from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text}")
    return value


def label_word(text: str) -> str:
    """An argparse type: a label for the CSV, not blank."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a word, got an empty label")
    return text


def cmd_predict(args: argparse.Namespace) -> int:
    from trainer.data.layout import DataError
    from trainer.evaluation.outputs import check_outputs

    with collector_paused():
        from trainer.evaluation.predict import predict_paths, write_predictions

    check_outputs(out=args.out)  # before the model runs: a refusal changes nothing
    rows, bad = predict_paths(
        args.model_dir,
        args.paths,
        args.topk,
        args.batch_size,
        args.num_workers,
        calibrated=not args.no_calibration,
        tta=args.tta,
        min_confidence=args.min_confidence,
        unknown_label=args.unknown_label,
    )
    if bad and not rows:  # on every process, so that all of them exit 2
        if is_main():
            _print_skipped(bad)
        listed = ", ".join(p for p, _ in bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise DataError(
            f"none of the {len(bad)} images could be read ({listed}; reasons above); "
            f"nothing written to {args.out}"
        )
    if not is_main():
        return 0
    write_predictions(rows, args.out, args.topk)
    _print_skipped(bad)
    print(
        f"{len(rows)} predictions -> {'stdout' if args.out == '-' else args.out}"
        + (f"; {len(bad)} unreadable files skipped" if bad else "")
        + "".join(f"; {part}" for part in _predict_notes(args, rows)),
        file=sys.stderr if args.out == "-" else sys.stdout,  # stdout holds the CSV alone
    )
    return 0


def _predict_notes(args: argparse.Namespace, rows: list[dict]) -> list[str]:
    """The end of predict's final line: unknowns written, calibration, TTA's views."""
    from trainer.evaluation.tta import model_views
    from trainer.model.folder import read_model_meta, temperature

    meta = read_model_meta(Path(args.model_dir) / "config.json")  # checked by predict already
    notes = []
    if args.min_confidence is not None:
        n = sum(r["labels"][0] == args.unknown_label for r in rows)
        notes.append(
            f"{n} below --min-confidence {args.min_confidence:g} written as {args.unknown_label!r}"
        )
    t = 1.0 if args.no_calibration else temperature(meta)
    views = list(model_views(meta)) if args.tta else []
    return notes + inference_lines(t, views, args.no_calibration)


def add_weights(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "weights",
        help="pretrained weights for offline machines: list what is cached, download on one with internet",
    )
    actions = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    actions.add_parser(
        "list", help="pretrained weights found in the torchvision and Hugging Face caches"
    )
    d = actions.add_parser(
        "download", help="fetch a backbone's pretrained weights (needs internet)"
    )
    d.add_argument("name", help="torchvision/<arch> or timm/<arch>")
    d.add_argument(
        "--to", metavar="DIR", help="write a weights file here instead of the library cache"
    )


def cmd_weights(args: argparse.Namespace) -> int:
    from trainer.model import weights

    if args.weights_command == "list":
        rows = weights.list_cached()
        for name, path, size in rows:
            print(f"{name:36} {size / 2**20:8.1f} MiB  {path}")
        if not rows:
            print(
                f"no pretrained weights cached (looked in {weights.torchvision_cache()} and the HF cache)"
            )
        return 0
    path = weights.download(args.name, args.to)
    print(f"{args.name}: {path}")
    if args.to:
        print(f"train with: model.name={args.name} model.pretrained={path}")
    return 0
