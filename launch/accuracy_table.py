"""Measure the accuracy switches on real data sets that installed packages ship (no network).

    .venv/bin/python launch/accuracy_table.py [--seeds 0 1 2] [--out runs/accuracy]

For each data set, trains the same recipe without and with the switches, once per seed, on
this machine (CPU or GPU), and prints a markdown table of test accuracy (mean +- std).
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", help="run only the data sets whose name contains this text")
    parser.add_argument("--out", default="runs/accuracy")
    args = parser.parse_args()
    out = Path(args.out)
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
