"""`trainer train`, `config`, `recipes` and `demo`: how a run is started and what config it gets.

config and recipes answer without torch: the training loop is imported inside the commands
that train, after the config is known to be good.
"""

from __future__ import annotations

import argparse

from trainer.cli.args import add_config_args, collector_paused, is_main

TRAIN_EPILOG = """\
overrides are dotted keys, e.g.:
  trainer train data.root=photos/ output_dir=runs/photos train.epochs=5 model.name=torchvision/resnet50
  trainer train --config resnet50-two-phase data.root=veg/ train.phases.1.optim.lr=2e-5
the same with several processes (GPUs, or 2 CPU processes with the cpu profile):
  accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes N train.py --config X.yaml key=value ...
  launch/local_multi_gpu.sh --config X.yaml key=value ...   (all GPUs of this machine)
every key, its type, default and meaning: trainer config --keys
"""


def add_train(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train on an image folder; writes a run folder with the model",
        description=(
            "Train on the images in data.root=DIR (class sub-folders, or train/ val/ test/ "
            "splits of them)."
        ),
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p)


def cmd_train(args: argparse.Namespace) -> int:
    from trainer.config import load_config

    cfg = load_config(args.config, args.overrides)
    from trainer.errors import writing

    with collector_paused():  # heavy imports only after the config is known to be good
        from trainer.train.run import run

    with writing(cfg.output_dir):  # a full disk names at least the run folder
        run(cfg)
    return 0


def add_config(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("config", help="print the resolved config, or every key with --keys")
    add_config_args(p)
    p.add_argument(
        "--keys", action="store_true", help="list every config key with type, default and meaning"
    )


def cmd_config(args: argparse.Namespace) -> int:
    from trainer.config import describe_keys, dump_yaml, load_config

    if args.keys:
        for key, tp, default, doc in describe_keys():
            print(f"{key:34} {tp:26} {default:18} {doc}")
        return 0
    print(dump_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def add_recipes(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("recipes", help="list the packaged recipes")


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


def add_demo(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
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

    with collector_paused():
        from trainer.train.run import run

    with writing(cfg.output_dir):
        summary = run(cfg)
    if is_main():
        print(
            f"\ndemo: test accuracy {summary['test_accuracy']:.2%} on {summary['test_samples']} held-out digits\n"
            f"model folder: {summary['model_dir']}\n"
            f"try: trainer predict {summary['model_dir']} {folder}/3 --out {args.output_dir}/predict-3.csv"
        )
    return 0
