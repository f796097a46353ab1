"""`trainer bench`: the flags of the speed comparison, handed to trainer.bench as BenchOptions."""

from __future__ import annotations

import argparse

from trainer.cli.args import add_config_args, count

BENCH_DESCRIPTION = """\
Training speed on this device, measured side by side in one process (images/s):
  (a) the configured model's training steps on random tensors already on the device (the ceiling)
  (b) the runner end to end: trainer.train.run on a JPEG folder through its own input pipeline
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


def add_bench(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "bench",
        help="training speed on this device, side by side: synthetic input, the runner, plain torchvision, a blog script",
        description=BENCH_DESCRIPTION,
        epilog=BENCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p)
    _add_data_args(p)
    _add_timing_args(p)
    p.add_argument(
        "--whole-run",
        action="store_true",
        help="wall clock of a whole run (default --config resnet50-two-phase) vs a blog-script loop, "
        "on a pre-split folder (generated: 15000/3000/3000 JPEGs of 224x224)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the numbers and settings as JSON")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    """The folder the cases read, or the one they generate."""
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


def _add_timing_args(p: argparse.ArgumentParser) -> None:
    """How long each case trains, and which phase of the config."""
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


def cmd_bench(args: argparse.Namespace) -> int:
    from trainer.bench.options import BenchOptions, parse_size, parse_split_images
    from trainer.bench.run import bench

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
