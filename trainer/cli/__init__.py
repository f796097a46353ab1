"""`trainer` command line: train, eval, predict, scan, export, weights, config, recipes, demo, bench.

Mistakes in what the user typed (config keys, paths, folders) end with exit code 2 and one line
naming the bad value, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from trainer.config import DataConfig
    from trainer.data.imagefolder import DataIndex

EXIT_USAGE = 2

TRAIN_EPILOG = """\
overrides are dotted keys, e.g.:
  trainer train data.root=photos/ output_dir=runs/photos train.epochs=5 model.name=torchvision/resnet50
  trainer train --config resnet50-two-phase data.root=veg/ train.phases.1.optim.lr=2e-5
the same with several processes (GPUs, or 2 CPU processes with the cpu profile):
  accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes N train.py --config X.yaml key=value ...
  launch/local_multi_gpu.sh --config X.yaml key=value ...   (all GPUs of this machine)
every key, its type, default and meaning: trainer config --keys
"""


BENCH_DESCRIPTION = """\
Training speed on this device, measured side by side in one process (images/s):
  (a) the configured model's training steps on random tensors already on the device (the ceiling)
  (b) the runner end to end: trainer.loop.run on a JPEG folder through its own input pipeline
      (data.pipeline), images/s from metrics.jsonl, the first epoch left out as warm-up
  (c) plain torchvision: ImageFolder + PIL RandomResizedCrop/flip/ToTensor/Normalize + DataLoader,
      same workers, model, precision, channels_last and batch, a hand-written loop
  (d) the blog-script setting: fp32, NCHW, batch 16, num_workers=0, .item() every batch
then peak GPU memory per case and the ratios b/a, b/c, b/d. --whole-run instead times a whole
two-phase run (ours vs a blog-script loop) on a pre-split folder. The config is the one `trainer
train` would use (--config, key=value), with model.pretrained=false unless you set it.
"""

BENCH_EPILOG = """\
examples:
  trainer bench model.name=torchvision/resnet50 train.batch_size=128      (generates 20000 JPEGs of 500x375 in a temp dir)
  trainer bench --make-data /data/bench && trainer bench --data /data/bench --json bench.json
  trainer bench --data photos/ --config my.yaml train.mixed_precision=bf16 train.compile=true
  trainer bench --whole-run --make-data /data/veg-standin && trainer bench --whole-run --data /data/veg-standin
  trainer bench --images 60 --size 64x48 --classes 3 --steps 3 --warmup 1 --epochs 2 \\
      model.name=torchvision/resnet18 data.image_size=32 train.batch_size=8   (seconds on a CPU)
"""


class Parser(argparse.ArgumentParser):
    """argparse with mistakes in one line (`trainer CMD: error: ...`), no usage block above it."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _Version(argparse.Action):
    """--version, read from the installed package's metadata only when asked."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        import importlib.metadata

        try:
            version = importlib.metadata.version("trainer")
        except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
            from trainer import __version__ as version
        print(f"trainer {version}")
        parser.exit(0)


def count(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in low..high, refused in one line naming the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected >= {low}, got {value}")
        if value > high:
            raise argparse.ArgumentTypeError(f"expected <= {high}, got {value}")
        return value

    parse.__name__ = f"integer {low}..{high}"  # what argparse says when the type fails
    parse.bounds = (low, high)  # type: ignore[attr-defined]  # read by the tests
    return parse


# Upper bounds well past any real use; they stop a typo (2**40 images) before any work.
BATCH = count(1, 2**20)
WORKERS = count(0, 1024)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="RECIPE|FILE.yaml",
        help="packaged recipe name (see `trainer recipes`) or a YAML file",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted config overrides, applied last"
    )


def _add_layout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--layout",
        choices=("auto", "pre-split", "classes"),
        default="auto",
        help="as data.layout: pre-split (train/ val/ test/ of class folders), classes (every "
        "sub-folder is a class), auto (pre-split when train/ is there; stops when unsure)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="trainer",
        description="Train an image classifier by transfer learning on a folder of labelled images.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train on an image folder; writes a run folder with the model",
        description="Train on DATA (class sub-folders, or train/ val/ test/ splits of them).",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(p)

    p = sub.add_parser("eval", help="metrics of a model folder on a labelled image folder")
    p.add_argument("model_dir", help="a model folder (RUN_DIR/model)")
    p.add_argument("data_dir", help="class sub-folders, or a pre-split folder")
    p.add_argument(
        "--split",
        default="auto",
        help="train, val or test of a pre-split folder (default: test, else val)",
    )
    _add_layout_arg(p)
    p.add_argument("--batch-size", type=BATCH, default=128)
    p.add_argument("--num-workers", type=WORKERS, default=None)
    p.add_argument("--json", metavar="FILE", help="also write all metrics as JSON")
    p.add_argument(
        "--report",
        metavar="DIR",
        help="also write report.json, report.md, plots/confusion_matrix.png and plots/mistakes.png to DIR",
    )

    p = sub.add_parser("predict", help="top-k labels for image files or folders, as CSV or JSON")
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
    p.add_argument("--batch-size", type=BATCH, default=64)
    p.add_argument("--num-workers", type=WORKERS, default=None)

    p = sub.add_parser(
        "export",
        help="export a model folder to ONNX or TorchScript, checked against PyTorch",
        description="Writes OUT/model.onnx (or model.pt), config.json (labels, preprocessing) and "
        "export.json (the measured max |logit difference| against PyTorch).",
    )
    p.add_argument("model_dir", help="a model folder (RUN_DIR/model)")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", help="output folder (default: MODEL_DIR-onnx or MODEL_DIR-torchscript)")
    p.add_argument(
        "--images",
        nargs="*",
        default=[],
        metavar="PATH",
        help="real images (files or folders) for the parity check",
    )

    p = sub.add_parser(
        "weights",
        help="pretrained weights for offline machines: list what is cached, download on one with internet",
    )
    wsub = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    wsub.add_parser(
        "list", help="pretrained weights found in the torchvision and Hugging Face caches"
    )
    d = wsub.add_parser("download", help="fetch a backbone's pretrained weights (needs internet)")
    d.add_argument("name", help="torchvision/<arch> or timm/<arch>")
    d.add_argument(
        "--to", metavar="DIR", help="write a weights file here instead of the library cache"
    )

    p = sub.add_parser(
        "scan",
        help="check an image folder before training: layout, classes, bad files",
        description="Index DATA_DIR as training would and fully decode every image (in parallel, "
        "cached): prints the layout, images per class and split, and the files training would "
        "skip (empty, truncated, not an image, over the pixel limit) with the reason.",
    )
    p.add_argument("data_dir", help="class sub-folders, or train/ val/ test/ splits of them")
    _add_layout_arg(p)
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

    p = sub.add_parser("config", help="print the resolved config, or every key with --keys")
    _add_config_args(p)
    p.add_argument(
        "--keys", action="store_true", help="list every config key with type, default and meaning"
    )

    sub.add_parser("recipes", help="list the packaged recipes")

    p = sub.add_parser(
        "demo",
        help="write scikit-learn's digits as an image folder and train on it (no network)",
        description="Writes the 1,797 digits to DATA as PNGs, trains the 'digits' recipe, prints test accuracy.",
    )
    p.add_argument(
        "--data",
        default="data/digits",
        help="where to write the digits folder (default: data/digits)",
    )
    p.add_argument("--output-dir", default="runs/demo", help="run folder (default: runs/demo)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides on top of the digits recipe",
    )
    p = sub.add_parser(
        "bench",
        help="training speed on this device, side by side: synthetic input, the runner, plain torchvision, a blog script",
        description=BENCH_DESCRIPTION,
        epilog=BENCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(p)
    p.add_argument(
        "--data",
        metavar="DIR",
        help="image folder to read (class sub-folders, or train/ val/ test/); "
        "default: data.root, else a folder generated in a temp dir from --images/--size/--classes",
    )
    p.add_argument(
        "--make-data",
        metavar="DIR",
        help="only write a generated JPEG folder to DIR (train/ val/ test/ with --whole-run) and exit",
    )
    p.add_argument(
        "--images",
        type=count(1, 10**8),
        default=20000,
        metavar="N",
        help="images to generate (default: 20000)",
    )
    p.add_argument(
        "--split-images",
        default="15000,3000,3000",
        metavar="TRAIN,VAL,TEST",
        help="--whole-run: images to generate per split (default: 15000,3000,3000)",
    )
    p.add_argument(
        "--size",
        metavar="WxH",
        help="generated image size (default: 500x375; 224x224 with --whole-run)",
    )
    p.add_argument(
        "--classes",
        type=count(2, 100_000),
        default=15,
        metavar="C",
        help="generated classes (default: 15)",
    )
    p.add_argument(
        "--quality", type=count(1, 100), default=90, metavar="Q", help="JPEG quality (default: 90)"
    )
    p.add_argument(
        "--gen-workers",
        type=count(1, 1024),
        default=None,
        metavar="N",
        help="processes writing images (default: all CPUs)",
    )
    p.add_argument(
        "--steps",
        type=count(1, 10**7),
        default=100,
        metavar="N",
        help="timed training steps of (a), (c), (d) (default: 100)",
    )
    p.add_argument(
        "--warmup",
        type=count(0, 10**7),
        default=20,
        metavar="N",
        help="untimed steps before them (default: 20; compile, cudnn, loader start-up)",
    )
    p.add_argument(
        "--epochs",
        type=count(1, 10**6),
        default=3,
        metavar="N",
        help="epochs of the runner in (b); the first is left out as warm-up (default: 3)",
    )
    p.add_argument(
        "--phase",
        type=count(0, 1000),
        default=0,
        metavar="N",
        help="which train.phases entry (freeze policy, optimizer) every case trains (default: 0)",
    )
    p.add_argument(
        "--whole-run",
        action="store_true",
        help="wall clock of a whole run (default --config resnet50-two-phase) vs a blog-script loop, "
        "on a pre-split folder (generated: 15000/3000/3000 JPEGs of 224x224)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the numbers and settings as JSON")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from trainer.config import load_config

    cfg = load_config(args.config, args.overrides)
    from trainer.errors import writing
    from trainer.train.loop import run  # heavy imports only after the config is known to be good

    with writing(cfg.output_dir):  # a full disk names at least the run folder
        run(cfg)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from trainer.config import describe_keys, dump_yaml, load_config

    if args.keys:
        for key, tp, default, doc in describe_keys():
            print(f"{key:34} {tp:26} {default:18} {doc}")
        return 0
    print(dump_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from trainer.config import RECIPES_DIR, list_recipes

    for name in list_recipes():
        lines = (RECIPES_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines()
        header = " ".join(line.lstrip("# ") for line in lines if line.startswith("#"))
        print(f"{name:20} {header.split('. ')[0].rstrip('.')}.")
    print(
        "use one with: trainer train --config NAME data.root=... ; show it: trainer config --config NAME"
    )
    return 0


@contextlib.contextmanager
def _layout_as_flag() -> Iterator[None]:
    """scan and eval take the layout as --layout: say so in a layout error, not data.layout=."""
    from trainer.data.imagefolder import DataError

    try:
        yield
    except DataError as e:
        raise DataError(str(e).replace("data.layout=", "--layout ")) from None


def cmd_scan(args: argparse.Namespace) -> int:
    import json

    from trainer.config import DataConfig
    from trainer.data.imagefolder import DataError, scan

    if not Path(args.data_dir).expanduser().is_dir():
        raise DataError(f"{args.data_dir!r} is not a folder")
    if args.json and args.json != "-":
        from trainer.files import check_replaceable

        check_replaceable(
            Path(args.json), "--json", _is_scan_json, "a report written by trainer scan --json"
        )
    cfg = DataConfig(root=args.data_dir, layout=args.layout, max_image_pixels=args.max_image_pixels)
    with _layout_as_flag():
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


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from trainer.errors import writing
    from trainer.evaluation.inference import check_outputs, evaluate_folder, not_pre_split_note
    from trainer.files import write_text_atomic

    check_outputs(json_out=args.json, report_dir=args.report)  # before any work
    # A full disk while writing the report names its folder (the files are written inside).
    with writing(args.report) if args.report else contextlib.nullcontext(), _layout_as_flag():
        result = evaluate_folder(
            args.model_dir,
            args.data_dir,
            args.split,
            args.batch_size,
            args.num_workers,
            args.report,
            args.layout,
        )
    if not _is_main():
        return 0
    names, bad = result["class_names"], result["bad_files"]
    _print_skipped([(b["path"], b["reason"]) for b in bad])
    note = not_pre_split_note(args.model_dir, args.data_dir, args.layout)
    if note:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"samples {result['samples']}  accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}",
        end="",
    )
    print(f"  top5 {result['top5_accuracy']:.4f}" if "top5_accuracy" in result else "")
    print(f"{'class':24} {'support':>8} {'accuracy':>9}")
    for name, n, acc in zip(names, result["support"], result["per_class_accuracy"]):
        print(f"{name:24} {n:8d} {'-' if acc is None else format(acc, '.4f'):>9}")
    if bad:
        print(f"{len(bad)} unreadable files skipped (listed on stderr; not in the numbers)")
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def _print_skipped(bad: list[tuple[str, str]]) -> None:
    for path, reason in bad:
        print(f"skipped unreadable image {path}: {reason}", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> int:
    from trainer.data.imagefolder import DataError
    from trainer.evaluation.inference import check_outputs, predict_paths, write_predictions

    check_outputs(out=args.out)  # before the model runs: a refusal changes nothing
    rows, bad = predict_paths(
        args.model_dir, args.paths, args.topk, args.batch_size, args.num_workers
    )
    if bad and not rows:  # on every process, so that all of them exit 2
        if _is_main():
            _print_skipped(bad)
        listed = ", ".join(p for p, _ in bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise DataError(
            f"none of the {len(bad)} images could be read ({listed}; reasons above); "
            f"nothing written to {args.out}"
        )
    if not _is_main():
        return 0
    write_predictions(rows, args.out, args.topk)
    _print_skipped(bad)
    print(
        f"{len(rows)} predictions -> {'stdout' if args.out == '-' else args.out}"
        + (f"; {len(bad)} unreadable files skipped" if bad else ""),
        file=sys.stderr if args.out == "-" else sys.stdout,  # stdout holds the CSV alone
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from trainer.model.export import ParityError, export_model

    out = args.out or f"{str(args.model_dir).rstrip('/')}-{args.format}"
    try:
        result = export_model(args.model_dir, args.format, out, args.images)
    except ParityError as e:  # the export was made but does not match: a failure, not a mistake
        print(f"trainer export: error: {e}", file=sys.stderr)
        return 1
    parity = result["parity"]
    print(
        f"{result['format']} model -> {Path(out) / result['file']}\n"
        f"parity on {parity['inputs']}: max |logit difference| {parity['max_abs_diff']:.2e} "
        f"(allowed {parity['atol']:g}), same top-1: {result['same_top1']}"
    )
    return 0


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


def cmd_demo(args: argparse.Namespace) -> int:
    from trainer.config import load_config
    from trainer.data.demo import write_digits

    folder = write_digits(args.data)
    print(f"digits image folder: {folder}")
    overrides = [
        f"data.root={folder}",
        f"output_dir={args.output_dir}",
        "overwrite=true",
        *args.overrides,
    ]
    cfg = load_config("digits", overrides)
    from trainer.errors import writing
    from trainer.train.loop import run

    with writing(cfg.output_dir):
        summary = run(cfg)
    if _is_main():
        print(
            f"\ndemo: test accuracy {summary['test_accuracy']:.2%} on {summary['test_samples']} held-out digits\n"
            f"model folder: {summary['model_dir']}\n"
            f"try: trainer predict {summary['model_dir']} {folder}/3 --out {args.output_dir}/predictions.csv"
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from trainer.bench import BenchOptions, bench, parse_size, parse_split_images

    opts = BenchOptions(
        config=args.config,
        overrides=args.overrides,
        data=args.data,
        make_data=args.make_data,
        images=args.images,
        split_images=parse_split_images(args.split_images),
        size=parse_size(args.size) if args.size else None,
        classes=args.classes,
        quality=args.quality,
        steps=args.steps,
        warmup=args.warmup,
        epochs=args.epochs,
        phase=args.phase,
        whole_run=args.whole_run,
        json=args.json,
        gen_workers=args.gen_workers,
    )
    bench(opts)
    return 0


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "export": cmd_export,
    "scan": cmd_scan,
    "weights": cmd_weights,
    "config": cmd_config,
    "recipes": cmd_recipes,
    "demo": cmd_demo,
    "bench": cmd_bench,
}


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


# How each command's output can go elsewhere, for the fix of a full disk.
WRITE_HINTS = {
    "train": "output_dir=... (and data.cache_dir=... for the pixel cache)",
    "demo": "--output-dir and --data",
    "predict": "--out",
    "eval": "--json / --report",
    "scan": "--json (or TRAINER_CACHE_DIR for its cache)",
    "export": "--out",
    "weights": "--to (or TORCH_HOME / HF_HOME)",
    "bench": "--data / --make-data / --json, or TMPDIR",
}


def _fail(command: str, error: BaseException, argv: list[str]) -> int:
    """Exit 2 with one line for a user's or the environment's mistake; a bug keeps its traceback."""
    from trainer.errors import BUG_LINE, user_message

    message = user_message(error, WRITE_HINTS.get(command, ""), argv)
    if message is None:
        traceback.print_exception(error)
        print(BUG_LINE, file=sys.stderr)
        return 1
    if _is_main():  # every process of a multi-process run gets here; one says it
        print(f"trainer {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


class CtrlC:
    """The SIGINT handler of a whole command: the first Ctrl-C raises KeyboardInterrupt, later
    ones are ignored. A terminal or `timeout -s INT` can deliver two at once; the second would
    otherwise interrupt the way out (clean-up, the 'interrupted' line) into a traceback.
    Training's StopFlag puts its own handler over this one and restores this one after."""

    def __init__(self) -> None:
        self.fired = False

    def __call__(self, signum: int, frame: object) -> None:
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt


@contextlib.contextmanager
def _ctrl_c_once() -> Iterator[CtrlC]:
    """Install CtrlC for the command, then put back what was there (main() runs in tests too)
    unless it fired: the process is on its way out, and a late Ctrl-C must not raise there.
    Left alone where Python's own handler is not installed: SIGINT ignored by the parent (a
    background job, nohup) stays ignored, and only the main thread may set handlers."""
    handler = CtrlC()
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield handler
        return
    signal.signal(signal.SIGINT, handler)
    try:
        yield handler
    finally:
        if not handler.fired:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a bad flag (one line, exit 2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if os.environ.get("TRAINER_OFFLINE", "") not in ("", "0"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm's weights come through the HF hub
    with _ctrl_c_once() as ctrl_c:
        try:
            return COMMANDS[args.command](args)
        except KeyboardInterrupt:
            ctrl_c.fired = True  # also when training's handler raised it: no second one now
            if _is_main():
                print(f"trainer {args.command}: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # `trainer scan DIR | head`: the reader left; not our error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        except Exception as e:
            return _fail(args.command, e, argv)


if __name__ == "__main__":
    sys.exit(main())
