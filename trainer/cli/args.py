"""What do several commands share: bounded number flags, --config and --layout, which process
speaks, the collector paused while the heavy modules import.

Imports nothing heavy: the parser is built for `--help` and `trainer config` too.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
from collections.abc import Callable, Iterator


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


def add_config_args(p: argparse.ArgumentParser) -> None:
    """--config and the key=value overrides of train, config and bench."""
    p.add_argument(
        "--config",
        metavar="RECIPE|FILE.yaml",
        help="packaged recipe name (see `trainer recipes`) or a YAML file",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted config overrides, applied last"
    )


def add_layout_arg(p: argparse.ArgumentParser) -> None:
    """--layout of scan and eval: data.layout as a flag."""
    p.add_argument(
        "--layout",
        choices=("auto", "pre-split", "classes"),
        default="auto",
        help="as data.layout: pre-split (train/ val/ test/ of class folders), classes (every "
        "sub-folder is a class), auto (pre-split when train/ is there; stops when unsure)",
    )


@contextlib.contextmanager
def layout_as_flag() -> Iterator[None]:
    """scan and eval take the layout as --layout: say so in a layout error, not data.layout=."""
    from trainer.data.layout import DataError

    try:
        yield
    except DataError as e:
        raise DataError(str(e).replace("data.layout=", "--layout ")) from None


def is_main() -> bool:
    """The process that prints: rank 0 of a multi-process launch, or the only one."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Import the heavy modules (torch, torchvision, timm, matplotlib: about a million objects,
    all kept for the process's life) with the garbage collector off, then freeze them: the 7 full
    collections during those imports, and every later one scanning them, cost 0.65 s of CPU per
    training process (8.35 -> 7.7 s of a tiny run). Only in a fresh process: where torch is
    imported already (tests, a sweep in one process), freezing would keep their garbage forever."""
    if "torch" in sys.modules or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
