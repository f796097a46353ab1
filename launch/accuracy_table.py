"""Measure recipes, input pipelines and switches on real data sets that installed packages ship
(no network).

    .venv/bin/python launch/accuracy_table.py [--seeds 0 1 2] [--out runs/accuracy] [--only TEXT]
    .venv/bin/python launch/accuracy_table.py --pipelines
    .venv/bin/python launch/accuracy_table.py --decisions

For each data set, trains each variant once per seed on this machine (CPU or GPU) and prints a
markdown table of test accuracy (mean +- std), then the cached pipeline's difference to the PIL
pipeline per data set. The variants: the data set's recipe with the default (cached) pipeline,
the same with data.pipeline=pil, the recipe plus the switches (which run on the PIL pipeline),
and the `scratch` recipe given only what a user knows of the data (its split, whether mirror
flips keep the class). With --pipelines: the two pipeline variants only.
With --decisions: trains the recipe only and prints, per data set, the test split's calibration
(ECE and NLL of the raw softmax and after the temperature fitted on val, from report.json) and
what test-time augmentation gains (`trainer eval --tta` on the same test images).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainer.config.ranges import SEED
from trainer.data.demo import write_digits, write_lfw_faces, write_photo_crops

# Switches on top of a recipe. Mirror flips stay off: a mirrored digit is another glyph.
TRICKS = [
    "train.label_smoothing=0.1",
    "data.auto_augment=trivial",
    "data.random_erasing=0.25",
    "train.mixup_alpha=0.2",
    "train.ema_decay=0.99",
    "optim.clip_grad_norm=5.0",
]


@dataclass(frozen=True)
class DataSet:
    name: str
    builder: Callable[[Path], Path]
    # What a user knows of the data: how to split it, whether a mirror image keeps its class,
    # its images' size when below the scratch recipe's 64 px
    facts: list[str]
    recipe: list[str]  # the recipe tuned for it and its overrides

    @property
    def slug(self) -> str:
        return self.builder.__name__.removeprefix("write_")


DATASETS = [
    DataSet(
        "digits (sklearn, 10 classes, 1,797 images)",
        write_digits,
        ["data.split=[0.7,0.2,0.1]", "data.hflip=false", "data.image_size=32"],
        ["--config", "digits", "train.epochs=12"],  # as measured in README (the recipe has 6)
    ),
    DataSet(
        "digits, low data: 10% for training (~180 images), 70% test",
        write_digits,
        ["data.split=[0.1,0.2,0.7]", "data.hflip=false", "data.image_size=32"],
        ["--config", "digits", "train.epochs=30", "train.batch_size=32"],
    ),
    DataSet(
        "LFW faces vs non-faces (skimage, 2 classes, 200 images)",
        write_lfw_faces,
        ["data.split=[0.5,0.2,0.3]", "data.image_size=32"],
        ["--config", "digits", "train.epochs=20", "train.batch_size=32"],
    ),
    DataSet(
        "photo crops (skimage + sklearn photos, 10 classes, 1,000 non-square crops)",
        write_photo_crops,
        ["data.split=[0.5,0.2,0.3]"],
        [
            "--config",
            "digits",
            "data.image_size=64",
            "data.hflip=true",
            "train.epochs=12",
            "train.batch_size=32",
        ],
    ),
]
# variant: its command line for a data set
PIPELINES: dict[str, Callable[[DataSet], list[str]]] = {
    "recipe, data.pipeline=pil": lambda d: [*d.recipe, *d.facts, "data.pipeline=pil"],
    "recipe, data.pipeline=cached (the default)": lambda d: [
        *d.recipe,
        *d.facts,
        "data.pipeline=cached",
    ],
}
VARIANTS = {
    **PIPELINES,
    "recipe + switches (PIL pipeline)": lambda d: [*d.recipe, *d.facts, *TRICKS],
    "scratch recipe": lambda d: ["--config", "scratch", *d.facts],
}


def train(args: list[str], seed: int, data: Path, out: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "trainer",
        "train",
        *args,
        f"data.root={data}",
        f"output_dir={out}",
        "overwrite=true",
        "checkpoint.enabled=false",
        f"train.seed={seed}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text())


def test_folder(run: Path, data: Path) -> Path:
    """RUN/test-images/CLASS/FILE: links to the run's test split (splits.csv), a folder that
    `trainer eval` scores whole."""
    folder = run / "test-images"
    with open(run / "splits.csv", newline="", encoding="utf-8") as f:
        for i, row in enumerate(r for r in csv.DictReader(f) if r["split"] == "test"):
            link = folder / row["label"] / f"{i:05d}{Path(row['path']).suffix}"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                os.symlink((data / row["path"]).resolve(), link)
    return folder


def eval_accuracy(run: Path, data: Path, *flags: str) -> float:
    """`trainer eval RUN/model` on the run's test images with `flags`: the accuracy."""
    out = run / f"eval{''.join(flags).replace('-', '_')}.json"
    cmd = [sys.executable, "-m", "trainer", "eval", str(run / "model"), str(test_folder(run, data))]
    proc = subprocess.run([*cmd, *flags, "--json", str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)} {' '.join(flags)}\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())["accuracy"]


def decisions(args: argparse.Namespace, out: Path) -> None:
    """Per data set and seed: test ECE/NLL raw and calibrated, accuracy without and with TTA."""
    keys = ("ece_before", "ece_after", "nll_before", "nll_after", "plain", "tta")
    rows = []
    for d in DATASETS:
        if args.only and args.only not in d.name:
            continue
        name, data = d.name, d.builder(out / "data" / d.slug)
        per_seed: dict[str, list[float]] = {k: [] for k in (*keys, "temperature")}
        for seed in args.seeds:
            run = out / "decisions" / d.slug / f"{len(rows)}-seed{seed}"
            summary = train([*d.recipe, *d.facts], seed, data, run)
            cal = json.loads((run / "report.json").read_text())["calibration"]
            numbers = {k: cal[k] for k in keys[:4]} | {"temperature": summary["temperature"]}
            numbers |= {"plain": eval_accuracy(run, data), "tta": eval_accuracy(run, data, "--tta")}
            print(f"{name} | seed {seed}: {numbers}", flush=True)
            for k, v in numbers.items():
                per_seed[k].append(v)
        rows.append((name, {k: statistics.mean(v) for k, v in per_seed.items()}, len(args.seeds)))
    print(
        "\n| data set | seeds | temperature | test ECE raw -> calibrated | test NLL raw -> calibrated "
        "| test accuracy | with --tta | TTA gain |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, m, n in rows:
        print(
            f"| {name} | {n} | {m['temperature']:.2f} | {m['ece_before']:.4f} -> {m['ece_after']:.4f} "
            f"| {m['nll_before']:.4f} -> {m['nll_after']:.4f} | {m['plain']:.2%} | {m['tta']:.2%} "
            f"| {(m['tta'] - m['plain']) * 100:+.2f} points |"
        )


def measure(args: argparse.Namespace, out: Path, variants: dict[str, Callable]) -> list[dict]:
    """Each data set x variant x seed trained once: per (data set, variant) the test accuracies."""
    rows = []
    for i, d in enumerate(DATASETS):
        if args.only and args.only not in d.name:
            continue
        data = d.builder(out / "data" / d.slug)
        for variant, command in variants.items():
            if args.variant and not any(v in variant for v in args.variant):
                continue
            accs, seconds = [], []
            for seed in args.seeds:
                tag = re.sub(r"[^a-z0-9]+", "_", variant.lower()).strip("_")
                run = out / f"{i}-{d.slug}" / tag / f"seed{seed}"
                done = run / "summary.json"
                if args.reuse and done.is_file():
                    summary = json.loads(done.read_text())
                else:
                    summary = train(command(d), seed, data, run)
                accs.append(summary["test_accuracy"])
                seconds.append(summary["train_seconds"])
                print(
                    f"{d.name} | {variant} | seed {seed}: test {accs[-1]:.4f} "
                    f"on {summary['test_samples']}",
                    flush=True,
                )
            rows.append(
                {
                    "name": d.name,
                    "variant": variant,
                    "accs": accs,
                    "mean": statistics.mean(accs),
                    "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    "seconds": statistics.mean(seconds),
                    "test": summary["test_samples"],
                }
            )
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        "\n| data set | variant | test accuracy (mean +- std) | per seed | test images | train s/run |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        seeds = ", ".join(f"{a:.2%}" for a in r["accs"])
        print(
            f"| {r['name']} | {r['variant']} | {r['mean']:.2%} +- {r['std']:.2%} | {seeds} "
            f"| {r['test']} | {r['seconds']:.0f} |"
        )


def print_differences(rows: list[dict], base: str, other: str) -> None:
    """Per data set: the cached pipeline (`other`) minus PIL (`base`), in points of test
    accuracy (means over seeds); nothing when a run left either out (--variant)."""
    by = {(r["name"], r["variant"]): r for r in rows}
    names = [
        n for n in dict.fromkeys(r["name"] for r in rows) if (n, base) in by and (n, other) in by
    ]
    if not names:
        return
    print("\n| data set | PIL pipeline | cached pipeline | cached - PIL |")
    print("|---|---|---|---|")
    for name in names:
        a, b = by[(name, base)], by[(name, other)]
        print(
            f"| {name} | {a['mean']:.2%} +- {a['std']:.2%} | {b['mean']:.2%} +- {b['std']:.2%} "
            f"| {(b['mean'] - a['mean']) * 100:+.2f} points |"
        )


def seed(text: str) -> int:
    """A --seeds value, in train.seed's range: checked here, since train.seed rejected a bad one
    only in the first run, after a data set was written."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value not in SEED:
        raise argparse.ArgumentTypeError(f"{text!r} is not {SEED.describe(integer=True)}")
    return value


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seeds",
        type=seed,
        nargs="+",
        default=[0, 1, 2],
        help="train.seed of each run (default: 0 1 2)",
    )
    parser.add_argument("--only", help="run only the data sets whose name contains this text")
    parser.add_argument(
        "--variant",
        action="append",
        help="run only the variants whose name contains this text (repeatable)",
    )
    parser.add_argument(
        "--out",
        default="runs/accuracy",
        help="folder for the data sets and runs, made if missing (default: runs/accuracy)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read the runs already in --out (their summary.json) instead of training them again",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--decisions",
        action="store_true",
        help="calibration and test-time augmentation instead of the switches",
    )
    mode.add_argument(
        "--pipelines",
        action="store_true",
        help="only each recipe with data.pipeline=pil and data.pipeline=cached, and the difference",
    )
    return parser


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Callable]:
    """The variants to run; a mistake in the arguments ends here (exit 2), before anything is
    written: otherwise it showed up after the data sets were written, or as an empty table."""
    if args.only and not any(args.only in d.name for d in DATASETS):
        parser.error(f"--only {args.only!r}: no data set's name contains it")
    variants = PIPELINES if args.pipelines else VARIANTS
    if args.variant and args.decisions:
        # --decisions trains the recipe only; a --variant there would be silently ignored
        parser.error("--variant does not apply to --decisions (it trains the recipe only); drop it")
    if args.variant and not any(v in name for v in args.variant for name in variants):
        # Checked against the variants this mode runs, not all of them: a scratch-only filter
        # with --pipelines matched VARIANTS and went on to an empty table
        parser.error(
            f"--variant {args.variant}: matches none of the variants being run "
            f"({'; '.join(variants)})"
        )
    out = Path(args.out)
    # The nearest folder that exists must be a writable directory: a file on the way failed
    # with NotADirectoryError only once the first data set was written
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        parser.error(f"--out {args.out}: {existing} is a file, not a folder; give another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        parser.error(f"--out {args.out}: {existing} is not writable; give another --out")
    return variants


def main() -> None:
    parser = make_parser()
    args = parser.parse_args()
    variants = check(parser, args)
    out = Path(args.out)
    if args.decisions:
        decisions(args, out)
    else:
        rows = measure(args, out, variants)
        print_table(rows)
        print_differences(rows, *PIPELINES)
        if not args.pipelines:
            print(f"\nswitches: {' '.join(TRICKS)}")


if __name__ == "__main__":
    main()
