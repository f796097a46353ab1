"""One corpus of hostile files (tests/image_corpus.py) through every command and pipeline that
opens images: each bad file is skipped and named, or, where the user asked for that
(data.on_bad_file=error, data.check_images=false), the command stops with exit 2 and one
message naming it; never a traceback, never a hang.

The commands run in-process through `trainer.cli.main` (a subprocess costs a torch import per
command) on timm's tiny test_resnet at 32 px; the default training run on the corpus is both
the train-cached-check case and the model folder of eval, predict, export and audit.
"""

from __future__ import annotations

import contextlib
import csv
import faulthandler
import io
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import make_folder
from tests.image_corpus import (
    BAD,
    BROKEN_LINK,
    DOOR_BAD,
    GOOD_ODD,
    NOT_LISTED,
    hostile_doors,
    write_corpus,
)
from trainer.cli import main
from trainer.errors import BUG_LINE

pytestmark = pytest.mark.integration

SMALL = [
    "--config",
    "cpu-smoke",
    "model.name=timm/test_resnet",
    "model.pretrained=false",
    "data.image_size=32",
    "train.epochs=1",
    "data.num_workers=0",
]
ALL_BAD = {**BAD, **DOOR_BAD}
HUNG_AFTER = 120  # seconds: a command still running then has hung (each takes a few)

# case -> (the command line after `trainer`, "skip" or "refuse"); {root}: the corpus folder,
# {model}: the trained model folder; train gets SMALL, data.root and output_dir
CASES = {
    "train-cached-check": (["train"], "skip"),  # the `trained` fixture's run (auto is cached)
    "train-cached-nocheck": (
        ["train", "data.pipeline=cached", "data.check_images=false"],
        "refuse",
    ),
    "train-decode-check": (["train", "data.pipeline=decode"], "skip"),
    "train-decode-nocheck": (
        ["train", "data.pipeline=decode", "data.check_images=false"],
        "refuse",
    ),
    "train-pil-check": (["train", "data.pipeline=pil"], "skip"),
    "train-pil-nocheck": (["train", "data.pipeline=pil", "data.check_images=false"], "refuse"),
    "train-on-bad-file-error": (["train", "data.on_bad_file=error"], "refuse"),
    "scan": (["scan", "{root}", "--workers", "1"], "skip"),
    "audit": (["audit", "{root}", "--model", "{model}", "--out", "audit", "--folds", "2"], "skip"),
    "eval": (["eval", "{model}", "{root}", "--num-workers", "0"], "skip"),
    "predict": (["predict", "{model}", "{root}", "--out", "p.csv", "--num-workers", "0"], "skip"),
    "export": (["export", "{model}", "--format", "torchscript", "--images", "{root}"], "skip"),
    "export-preprocessing": (
        ["export", "{model}", "--with-preprocessing", "--images", "{root}", "--out", "onnx"],
        "skip",
    ),
}


@dataclass
class Outcome:
    """What one command did: its exit code and output, on the corpus at `root`; a training
    command's run folder is `run`."""

    code: int
    out: str
    err: str
    root: Path
    run: Path


class Hung(BaseException):
    """Raised in a command that ran past HUNG_AFTER; not an Exception, so no handler of
    trainer's turns it into an exit code."""


@contextlib.contextmanager
def _bounded() -> Iterator[None]:
    """A hang in Python code ends in Hung (a failure with its traceback); one in C code that
    the alarm cannot interrupt ends the whole session 30 s later, all threads dumped."""

    def hung(signum, frame):
        raise Hung(f"still running after {HUNG_AFTER} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HUNG_AFTER)
    faulthandler.dump_traceback_later(HUNG_AFTER + 30, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _main(argv: list[str]) -> int:
    with _bounded():
        return main(argv)


@contextlib.contextmanager
def _hostile(base: Path) -> Iterator[Path]:
    """A fresh corpus folder (class a: 6 good images and every corpus file; class b: 6 good
    images) with its doors open, own caches, `base` the working folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRAINER_CACHE_DIR", str(base / "cache"))
        mp.chdir(base)
        root = make_folder(base / "photos", ["a", "b"], 6)
        write_corpus(root / "a", doors=True)
        with hostile_doors(mp, root / "a"):
            yield root


def _command(case: str, root: Path, model: Path, run: Path) -> list[str]:
    argv = [arg.format(root=root, model=model) for arg in CASES[case][0]]
    if argv[0] == "train":
        argv[1:1] = [*SMALL, f"data.root={root}", f"output_dir={run}"]
    return argv


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Outcome:
    """The default `trainer train` on the corpus (train-cached-check); its model folder is the
    one of eval, predict, export and audit."""
    base = tmp_path_factory.mktemp("trained")
    out, err = io.StringIO(), io.StringIO()  # capsys is per test; this run serves them all
    with _hostile(base) as root, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _main(_command("train-cached-check", root, Path(), base / "run"))
    return Outcome(code, out.getvalue(), err.getvalue(), root, base / "run")


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _check_training(outcome: Outcome) -> None:
    """Trained on the good files; every bad one in bad_files.csv with its reason; the broken
    link and the formats not listed told in notes."""
    text = outcome.out + outcome.err
    names = {r["path"].rsplit("/", 1)[-1] for r in _rows(outcome.run / "splits.csv")}
    assert set(GOOD_ODD) <= names and not names & {*ALL_BAD, *NOT_LISTED, BROKEN_LINK}
    reasons = {r["path"]: r["reason"] for r in _rows(outcome.run / "bad_files.csv")}
    assert set(reasons) == {f"a/{name}" for name in ALL_BAD}
    assert all(reasons[f"a/{n}"].startswith(why) for n, why in ALL_BAD.items()), reasons
    assert f"{len(ALL_BAD)} bad files skipped" in text
    _check_notes(text)


def _check_notes(text: str) -> None:
    assert f"broken links skipped: a/{BROKEN_LINK}" in text
    assert "files ignored as not images" in text and NOT_LISTED[0] in text


def _check_named(text: str, names: dict[str, str]) -> None:
    for name, why in names.items():
        assert f"a/{name}: {why}" in text, (name, text[-3000:])


def _check_skipped(case: str, outcome: Outcome) -> None:
    assert outcome.code == 0, outcome.err[-4000:]
    text = outcome.out + outcome.err
    if case.startswith("train"):
        _check_training(outcome)
    elif case == "scan":
        _check_named(text, ALL_BAD)
        _check_notes(text)
    elif case in ("eval", "predict"):
        _check_named(outcome.err, ALL_BAD)
        assert f"{len(ALL_BAD)} unreadable files skipped" in outcome.out
    elif case == "audit":
        _check_named(outcome.err, ALL_BAD)
    else:  # export reads the first good files of the folder, and names the bad ones met
        _check_named(outcome.err, {n: ALL_BAD[n] for n in ("bomb.png", "empty.jpg")})


def _check_refused(case: str, outcome: Outcome) -> None:
    """Exit 2 with one message (it may list the files, one a line) naming a bad file."""
    assert outcome.code == 2, (outcome.code, outcome.err[-4000:])
    command = case.split("-")[0]
    assert outcome.err.strip().splitlines()[0].startswith(f"trainer {command}: error: ")
    assert any(name in outcome.err for name in ALL_BAD), outcome.err
    if case == "train-on-bad-file-error":
        assert all(f"a/{name}: {why}" in outcome.err for name, why in ALL_BAD.items())


@pytest.mark.parametrize("case", list(CASES))
def test_bad_files_are_skipped_and_named_or_refused_never_a_traceback(
    case, trained, tmp_path, capsys
):
    assert trained.code == 0, trained.err[-4000:]  # and its model folder is there
    outcome = trained
    if case != "train-cached-check":
        with _hostile(tmp_path) as root:
            code = _main(_command(case, root, trained.run / "model", tmp_path / "run"))
        outcome = Outcome(code, *capsys.readouterr(), root, tmp_path / "run")
    assert "Traceback" not in outcome.err and BUG_LINE not in outcome.err, outcome.err[-6000:]
    if CASES[case][1] == "skip":
        _check_skipped(case, outcome)
    else:
        _check_refused(case, outcome)
