"""`trainer` command line: train, eval, predict, scan, audit, export, weights, config,
recipes, demo, bench.

Each command's flags and help are beside its code (cli/train.py, model.py, export.py, scan.py,
audit.py, bench.py); here are the table of commands, --version and the one error boundary:
mistakes in what the user typed (config keys, paths, folders) end with exit code 2 and one line
naming the bad value, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from trainer.cli import audit, bench, export, model, scan, train
from trainer.cli.args import is_main

EXIT_USAGE = 2


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


Command = Callable[[argparse.Namespace], int]

# Every command: the function that adds its flags and help, and the one that runs it, in the
# order `trainer --help` lists them.
_TABLE: dict[str, tuple[Callable[[argparse._SubParsersAction], None], Command]] = {
    "train": (train.add_train, train.cmd_train),
    "eval": (model.add_eval, model.cmd_eval),
    "predict": (model.add_predict, model.cmd_predict),
    "export": (export.add_export, export.cmd_export),
    "weights": (model.add_weights, model.cmd_weights),
    "scan": (scan.add_scan, scan.cmd_scan),
    "audit": (audit.add_audit, audit.cmd_audit),
    "config": (train.add_config, train.cmd_config),
    "recipes": (train.add_recipes, train.cmd_recipes),
    "demo": (train.add_demo, train.cmd_demo),
    "bench": (bench.add_bench, bench.cmd_bench),
}
# What main() runs for each command name.
COMMANDS: dict[str, Command] = {name: run for name, (_, run) in _TABLE.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="trainer",
        description="Train an image classifier by transfer learning on a folder of labelled images.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_flags, _ in _TABLE.values():
        add_flags(commands)
    return parser


# How each command's output can go elsewhere, for the fix of a full disk.
WRITE_HINTS = {
    "train": "output_dir=... (and data.cache_dir=... for the pixel cache)",
    "demo": "--output-dir and --data",
    "predict": "--out",
    "eval": "--json / --report",
    "scan": "--json (or TRAINER_CACHE_DIR for its cache)",
    "audit": "--out",
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
    if is_main():  # every process of a multi-process run gets here; one says it
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
            if is_main():
                print(f"trainer {args.command}: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # `trainer scan DIR | head`: the reader left; not our error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        except Exception as e:
            return _fail(args.command, e, argv)


def command(argv: list[str] | None = None) -> int:
    """What `trainer`, `python -m trainer` and train.py run: main(), then gc.freeze(), so that
    the interpreter's exit skips its last collections over every object torch, torchvision and
    matplotlib made: 1.4 s of each process's exit on the 2-core machine, 0.4 s after. Nothing
    is lost: by then files and logs are closed, and Python never promised __del__ at exit."""
    code = main(argv)
    gc.freeze()
    return code
