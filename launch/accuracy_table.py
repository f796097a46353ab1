"""Measure the accuracy switches on real data sets that installed packages ship (no network).

    .venv/bin/python launch/accuracy_table.py [--seeds 0 1 2] [--out runs/accuracy]
    .venv/bin/python launch/accuracy_table.py --decisions [--seeds 0 1 2]

For each data set, trains the same recipe without and with the switches, once per seed, on
this machine (CPU or GPU), and prints a markdown table of test accuracy (mean +- std).
With --decisions: trains the recipe only and prints, per data set, the test split's calibration
(ECE and NLL of the raw softmax and after the temperature fitted on val, from report.json) and
what test-time augmentation gains (`trainer eval --tta` on the same test images).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from trainer.data.demo import write_digits, write_lfw_faces

# Switches on top of a recipe. Mirror flips stay off: a mirrored digit is another glyph.
TRICKS = [
    "train.label_smoothing=0.1",
    "data.auto_augment=trivial",
    "data.random_erasing=0.25",
    "train.mixup_alpha=0.2",
    "train.ema_decay=0.99",
    "optim.clip_grad_norm=5.0",
]
DATASETS = {
    # name: (builder, base overrides)
    "digits (sklearn, 10 classes, 1,797 images)": (write_digits, ["--config", "digits"]),
    "digits, low data: 10% for training (~180 images), 70% test": (
        write_digits,
        [
            "--config",
            "digits",
            "data.split=[0.1,0.2,0.7]",
            "train.epochs=30",
            "train.batch_size=32",
        ],
    ),
    "LFW faces vs non-faces (skimage, 2 classes, 200 images)": (
        write_lfw_faces,
        [
            "--config",
            "digits",
            "data.split=[0.5,0.2,0.3]",
            "train.epochs=20",
            "train.batch_size=32",
        ],
    ),
}


def train(base: list[str], extra: list[str], data: Path, out: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "trainer",
        "train",
        *base,
        f"data.root={data}",
        f"output_dir={out}",
        "overwrite=true",
        "checkpoint.enabled=false",
        *extra,
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
    for name, (builder, base) in DATASETS.items():
        if args.only and args.only not in name:
            continue
        data = builder(out / "data" / builder.__name__.removeprefix("write_"))
        per_seed: dict[str, list[float]] = {k: [] for k in (*keys, "temperature")}
        for seed in args.seeds:
            run = (
                out
                / "decisions"
                / builder.__name__.removeprefix("write_")
                / f"{len(rows)}-seed{seed}"
            )
            summary = train(base, [f"train.seed={seed}"], data, run)
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", help="run only the data sets whose name contains this text")
    parser.add_argument("--out", default="runs/accuracy")
    parser.add_argument(
        "--decisions",
        action="store_true",
        help="calibration and test-time augmentation instead of the switches",
    )
    args = parser.parse_args()
    out = Path(args.out)
    if args.decisions:
        decisions(args, out)
        return
    rows = []
    for name, (builder, base) in DATASETS.items():
        if args.only and args.only not in name:
            continue
        data = builder(out / "data" / builder.__name__.removeprefix("write_"))
        for variant, extra in (("recipe", []), ("recipe + switches", TRICKS)):
            accs, seconds = [], []
            for seed in args.seeds:
                slug = f"{len(rows) // 2}-{builder.__name__.removeprefix('write_')}"
                run = out / slug / variant.replace(" ", "").replace("+", "_") / f"seed{seed}"
                summary = train(base, [*extra, f"train.seed={seed}"], data, run)
                accs.append(summary["test_accuracy"])
                seconds.append(summary["train_seconds"])
                print(
                    f"{name} | {variant} | seed {seed}: test {summary['test_accuracy']:.4f} on {summary['test_samples']}",
                    flush=True,
                )
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            rows.append(
                (
                    name,
                    variant,
                    statistics.mean(accs),
                    std,
                    accs,
                    statistics.mean(seconds),
                    summary["test_samples"],
                )
            )
    print(
        "\n| data set | variant | test accuracy (mean +- std) | per seed | test images | train s/run |"
    )
    print("|---|---|---|---|---|---|")
    for name, variant, mean, std, accs, secs, n in rows:
        print(
            f"| {name} | {variant} | {mean:.2%} +- {std:.2%} | {', '.join(f'{a:.2%}' for a in accs)} | {n} | {secs:.0f} |"
        )
    print(f"\nswitches: {' '.join(TRICKS)}")


if __name__ == "__main__":
    main()
