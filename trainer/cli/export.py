"""`trainer export`: a model folder as ONNX or TorchScript for people who do not use PyTorch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.cli.args import collector_paused


def add_export(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "export",
        help="export a model folder to ONNX or TorchScript, checked against PyTorch",
        description="Writes OUT/model.onnx (or model.pt), config.json (labels, preprocessing) and "
        "export.json (the measured max |logit difference| against PyTorch; with "
        "--with-preprocessing, the max |probability difference| against trainer predict on "
        "real image files).",
    )
    p.add_argument("model_dir", help="a model folder (RUN_DIR/model)")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument(
        "--out",
        help="output folder (default: MODEL_DIR-onnx, MODEL_DIR-torchscript or MODEL_DIR-onnx-preprocessing)",
    )
    p.add_argument(
        "--images",
        nargs="*",
        default=[],
        metavar="PATH",
        help="real images (files or folders) for the parity check; required with "
        "--with-preprocessing (its first 16 files: take photos of different sizes)",
    )
    p.add_argument(
        "--with-preprocessing",
        action="store_true",
        help="ONNX only: the model takes one decoded RGB image as uint8 (1, height, width, 3), "
        "any size, and gives (1, classes) calibrated probabilities (softmax(logits / T)); "
        "resize, center crop and normalization run inside, as trainer predict does them",
    )


def cmd_export(args: argparse.Namespace) -> int:
    with collector_paused():
        from trainer.model.export import ParityError, export_model

    suffix = "onnx-preprocessing" if args.with_preprocessing else args.format
    out = args.out or f"{str(args.model_dir).rstrip('/')}-{suffix}"
    try:
        result = export_model(
            args.model_dir, args.format, out, args.images, args.with_preprocessing
        )
    except ParityError as e:  # the export was made but does not match: a failure, not a mistake
        print(f"trainer export: error: {e}", file=sys.stderr)
        return 1
    parity = result["parity"]
    for bad in parity["skipped"]:  # as eval and predict name them
        print(f"skipped unreadable image {bad['path']}: {bad['reason']}", file=sys.stderr)
    what = "probability" if result.get("with_preprocessing") else "logit"
    print(
        f"{result['format']} model -> {Path(out) / result['file']}\n"
        f"parity on {parity['inputs']}: max |{what} difference| {parity['max_abs_diff']:.2e} "
        f"(allowed {parity['atol']:g}), same top-1: {result['same_top1']}"
    )
    return 0
