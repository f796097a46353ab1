"""A user's or the environment's mistake is one line and exit 2; a bug keeps its traceback.

Config numbers and CLI flags are checked before any work, table-driven from the dataclasses and
the parser so that a new key or flag is covered without touching this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from trainer import errors
from trainer.cli import build_parser, main
from trainer.config import RANGES, ConfigError, RunConfig, load_config, number_kind

# ----------------------------------------------------------------------------- config numbers


def numeric_keys(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, type]]:
    """(dotted override key, 'Class.field', int|float) of every number in the config tree."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if dataclasses.is_dataclass(tp):
            out += numeric_keys(tp, key + ".")
        elif item is not None and dataclasses.is_dataclass(item):
            out += numeric_keys(item, key + ".0.")  # train.phases.0.*
        elif number_kind(tp):
            out.append((key, f"{cls.__name__}.{f.name}", number_kind(tp)[0]))
    return out


NUMERIC = numeric_keys()


def bad_values(range_name: str, kind: type) -> list[str]:
    """Values every number refuses, then the ones just outside this key's own range."""
    r = RANGES[range_name]
    values = ["nan", "inf", "-inf", "abc", "-1", str(2**40)]
    step = 1 if kind is int else 1e-9 * max(1.0, abs(r.high))
    values += [str(r.low if r.low_open else r.low - step)]
    values += [str(r.high if r.high_open else r.high + step)]
    if kind is int:
        values.append("1.5")
    return values


def test_every_numeric_key_has_a_range_and_no_range_is_stale():
    assert {name for _, name, _ in NUMERIC} == set(RANGES)
    assert len(NUMERIC) >= 30  # the walk found the tree (phases' optim included)


@pytest.mark.parametrize(("key", "range_name", "kind"), NUMERIC, ids=[k for k, _, _ in NUMERIC])
def test_bad_numbers_are_refused_naming_the_dotted_key(key, range_name, kind):
    for value in bad_values(range_name, kind):
        text = f"[{value}, 0.2, 0.1]" if key == "data.split" else value
        with pytest.raises(ConfigError) as err:
            load_config(None, [f"{key}={text}"])
        assert re.match(rf"{re.escape(key)}(\.\d+)?: ", str(err.value)), (value, str(err.value))


def test_the_defaults_and_every_recipe_are_inside_the_ranges():
    from trainer.config import list_recipes

    for name in list_recipes():
        assert isinstance(load_config(name), RunConfig)


def test_batch_size_1_names_batchnorm_and_the_fix():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.batch_size=1"])
    text = str(err.value)
    assert text.startswith("train.batch_size:") and "BatchNorm" in text
    assert "train.grad_accum_steps" in text
    assert load_config(None, ["train.batch_size=2"]).train.batch_size == 2


def test_a_bare_folder_as_override_suggests_data_root(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    for arg in ("photos/", "photos"):
        with pytest.raises(ConfigError, match=f"data.root={arg}"):
            load_config(None, [arg])
    assert main(["train", "photos/"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "trainer train: error: 'photos/' is not a key=value override; "
        "for the image folder write data.root=photos/"
    ]


def test_a_config_file_that_is_not_text_is_a_config_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_config(str(path))


# ----------------------------------------------------------------------------- CLI flags

POSITIONALS = {"predict": ["m", "x.jpg"], "eval": ["m", "d"], "scan": ["d"], "export": ["m"]}


def numeric_flags() -> list[tuple[str, str, tuple[int, int]]]:
    """(command, --flag, (low, high)) of every bounded integer flag of the commands."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for command in ("predict", "eval", "export", "scan", "bench"):
        for action in sub.choices[command]._actions:
            bounds = getattr(action.type, "bounds", None)
            if action.option_strings and bounds:
                out.append((command, action.option_strings[0], bounds))
            elif action.type is int:  # an int flag without bounds would escape the check
                pytest.fail(f"trainer {command} {action.option_strings}: use cli.count(low, high)")
    return out


FLAGS = numeric_flags()


def test_the_flags_of_predict_eval_scan_bench_are_all_bounded():
    found = {(c, f) for c, f, _ in FLAGS}
    for flag in ("--topk", "--batch-size", "--num-workers"):
        assert ("predict", flag) in found
    assert {("eval", "--batch-size"), ("scan", "--workers"), ("bench", "--images")} <= found


@pytest.mark.parametrize(("command", "flag", "bounds"), FLAGS, ids=[f"{c}{f}" for c, f, _ in FLAGS])
def test_bad_flag_values_exit_2_in_one_line_naming_the_flag(command, flag, bounds, capsys):
    low, high = bounds
    for value in ("abc", "nan", "1.5", str(low - 1), str(high + 1), str(2**40)):
        assert main([command, *POSITIONALS.get(command, []), flag, value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"trainer {command}: error: "), err
        assert flag in err[0] and "Traceback" not in err[0]


def test_version_prints_the_installed_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"trainer {importlib.metadata.version('trainer')}"


def test_usage_mistakes_are_one_line_and_exit_2(capsys):
    assert main(["predict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("trainer predict: error: ")


# ----------------------------------------------------------------------------- start-up time


@pytest.mark.parametrize(
    "argv",
    [["recipes"], ["config", "--keys"], ["config"], ["--help"], ["--version"], ["train", "x=1"]],
    ids=lambda a: " ".join(a),
)
def test_commands_that_do_not_train_never_import_torch(argv):
    code = (
        "import sys\nfrom trainer.cli import main\ntry:\n    main(sys.argv[1:])\n"
        "except SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'accelerate', 'datasets', 'torchvision') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60
    )
    assert "HEAVY []" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


# ----------------------------------------------------------------------------- messages


def test_no_space_message_names_the_mount_point_the_path_and_the_fix(tmp_path):
    target = tmp_path / "not" / "yet" / "there.csv"
    text = errors.no_space_message(target, errno.ENOSPC, "--out")
    mount = errors.mount_point(target)
    assert os.path.ismount(mount) and str(tmp_path).startswith(mount.rstrip("/") or "/")
    assert text.startswith(f"no space left on {mount}") and f"while writing {target}" in text
    assert "free space" in text and "--out" in text
    quota = errors.no_space_message(target, errno.EDQUOT)
    assert quota.startswith("disk quota exceeded on ")


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.EACCES, "give your user access"),
        (errno.EPERM, "ownership"),
        (errno.ENOTDIR, "not a folder"),
        (errno.EEXIST, "already exists"),
        (errno.ELOOP, "symbolic link"),
        (errno.EROFS, "read-only file system"),
        (errno.ENOENT, "check the path"),
    ],
)
def test_os_errors_name_the_path_and_what_to_do(code, words, tmp_path):
    error = OSError(code, os.strerror(code), str(tmp_path / "f"))
    text = errors.user_message(error)
    assert text is not None and str(tmp_path / "f") in text and words in text


def test_an_os_error_from_a_dataloader_worker_is_read_back_from_its_text():
    wrapped = OSError(
        "Caught PermissionError in DataLoader worker process 0.\nOriginal Traceback (most "
        "recent call last):\n  File ...\nPermissionError: [Errno 13] Permission denied: '/d/a.png'"
    )
    text = errors.user_message(wrapped)
    assert text.startswith("/d/a.png: Permission denied;") and "access" in text


def test_a_tilde_path_of_no_such_user_is_one_line_naming_the_path(monkeypatch, capsys):
    import trainer.cli as cli

    def expand(args):  # what pathlib does with '~nouser/x' in any command
        return Path("~nouser-e7/x").expanduser()

    with pytest.raises(RuntimeError, match=errors.NO_HOME):
        expand(None)
    monkeypatch.setitem(cli.COMMANDS, "recipes", expand)
    argv = ["recipes"]
    assert errors.user_message(RuntimeError("Could not determine home directory.")) is not None
    assert main(argv) == 2
    line = capsys.readouterr().err.strip()
    assert "Traceback" not in line and "\n" not in line and "full path" in line
    found = errors.unknown_user_message(["train", "data.root=~nouser-e7/x", "output_dir=~/r"])
    assert found == "'~nouser-e7/x': no user 'nouser-e7' on this machine; give the full path"
    assert errors.unknown_user_message(["scan", "~nouser-e7/x"]).startswith("'~nouser-e7/x'")


def test_ctrl_c_raises_once_and_ignores_the_ones_after_it():
    from trainer.cli import CtrlC

    handler = CtrlC()
    with pytest.raises(KeyboardInterrupt):
        handler(2, None)
    assert handler(2, None) is None and handler(2, None) is None


def test_a_second_ctrl_c_while_saying_interrupted_does_not_become_a_traceback(monkeypatch):
    """`timeout -s INT` and terminals can send two SIGINTs at once: the second one arrived while
    main printed 'interrupted' and escaped as a KeyboardInterrupt traceback."""
    import io
    import signal

    import trainer.cli as cli

    class SecondCtrlC(io.StringIO):
        def write(self, text: str) -> int:
            signal.raise_signal(signal.SIGINT)  # runs the Python handler before returning
            return super().write(text)

    def interrupted(args):
        signal.raise_signal(signal.SIGINT)

    stderr = SecondCtrlC()
    monkeypatch.setitem(cli.COMMANDS, "recipes", interrupted)
    monkeypatch.setattr(sys, "stderr", stderr)
    before = signal.getsignal(signal.SIGINT)
    # as in a terminal: where the suite runs with SIGINT ignored (started with '&'), main
    # rightly leaves it ignored and there would be no Ctrl-C to test
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = main(["recipes"])
    except KeyboardInterrupt:  # not raised on: pytest would take it as the user's Ctrl-C
        pytest.fail("a second Ctrl-C escaped main() as KeyboardInterrupt")
    finally:
        signal.signal(signal.SIGINT, before)
    assert code == 130
    assert stderr.getvalue() == "trainer recipes: interrupted\n"


def test_bugs_are_not_user_errors():
    for error in (KeyError("x"), RuntimeError("boom"), TypeError("t"), ValueError("v")):
        assert errors.user_message(error) is None


def test_main_shows_a_bugs_traceback_and_asks_for_a_report(monkeypatch, capsys):
    import trainer.cli as cli

    def broken(args):
        return {}["missing"]  # a KeyError of ours: a bug, not the user's mistake

    monkeypatch.setitem(cli.COMMANDS, "recipes", broken)
    assert main(["recipes"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err
    assert err.strip().splitlines()[-1] == errors.BUG_LINE


def test_main_turns_environment_errors_into_one_line_exit_2_on_the_main_process_only(
    monkeypatch, capsys, tmp_path
):
    import trainer.cli as cli

    def denied(args):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setitem(cli.COMMANDS, "recipes", denied)
    assert main(["recipes"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("trainer recipes: error: ")
    assert str(tmp_path / "x") in err[0]
    monkeypatch.setenv("RANK", "1")
    assert main(["recipes"]) == 2
    assert capsys.readouterr().err == ""


def test_writing_names_the_path_of_a_bare_write_error_and_of_safetensors_full_disk(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(OSError) as err, errors.writing(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert err.value.filename == str(target) and err.value.errno == errno.ENOSPC

    class SafetensorError(Exception):
        pass

    with pytest.raises(OSError) as err, errors.writing(target):
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    with pytest.raises(KeyError), errors.writing(target):
        raise KeyError("a bug stays a bug")


# ----------------------------------------------------------------------------- files


def test_write_text_atomic_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    from trainer import files

    path = tmp_path / "p.csv"
    path.write_text("old", encoding="utf-8")

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(OSError):
        files.write_text_atomic(path, "new")
    assert path.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]  # no temp file left


def test_model_folder_files_are_readable_by_others_as_the_umask_allows(tmp_path):
    import torch

    from trainer.config import ModelConfig
    from trainer.data.transforms import IMAGENET
    from trainer.model.classifier import Classifier
    from trainer.model.folder import save_model_folder

    model = Classifier(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    old = os.umask(0o022)
    try:
        save_model_folder(model, tmp_path / "model", ModelConfig(), ["a", "b"], IMAGENET)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "model").iterdir()}
    assert modes == {"model.safetensors": 0o644, "config.json": 0o644}
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755


# ----------------------------------------------------------------------------- model folders


def _model_folder(tmp_path: Path, meta: dict | bytes) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    text = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    (folder / "config.json").write_bytes(text)
    return folder


GOOD_META = {
    "format": "trainer-model",
    "architecture": {
        "name": "torchvision/resnet18",
        "head": "linear",
        "head_hidden": 8,
        "head_dropout": 0.0,
    },
    "num_classes": 2,
    "class_names": ["a", "b"],
    "preprocessing": {"image_size": 32, "resize_size": 36, "mean": [0.5] * 3, "std": [0.2] * 3},
}


@pytest.mark.parametrize(
    ("meta", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\xfa", "not valid JSON"),
        ({**GOOD_META, "architecture": {"name": "torchvision/resnet18"}}, "architecture must hold"),
        ({**GOOD_META, "num_classes": 3}, "num_classes is 3 but class_names has 2"),
        ({**GOOD_META, "class_names": "ab"}, "class_names must be a list"),
        ({**GOOD_META, "preprocessing": {"image_size": 32}}, "preprocessing is incomplete"),
        (
            {**GOOD_META, "preprocessing": {**GOOD_META["preprocessing"], "std": [0, 0, 0]}},
            "impossible",
        ),
        (
            {**GOOD_META, "architecture": {**GOOD_META["architecture"], "head_hidden": -3}},
            "head_hidden",
        ),
        # sizes no training writes: they would ask for gigabytes per image (MemoryError)
        (
            {**GOOD_META, "preprocessing": {**GOOD_META["preprocessing"], "image_size": 10**9}},
            "impossible",
        ),
        (
            {**GOOD_META, "preprocessing": {**GOOD_META["preprocessing"], "resize_size": 10**9}},
            "impossible",
        ),
        (
            {**GOOD_META, "preprocessing": {**GOOD_META["preprocessing"], "image_size": 2}},
            "impossible",
        ),
        (
            {**GOOD_META, "preprocessing": {**GOOD_META["preprocessing"], "image_size": 1e999}},
            "preprocessing is incomplete or wrong (OverflowError",
        ),
    ],
)
def test_a_broken_model_folder_config_is_a_model_error_naming_the_file(tmp_path, meta, words):
    from trainer.model.folder import load_model_folder
    from trainer.model.safeload import ModelError

    folder = _model_folder(tmp_path, meta)
    with pytest.raises(ModelError) as err:
        load_model_folder(folder)
    assert str(folder / "config.json") in str(err.value) and words in str(err.value)


def test_every_user_error_class_named_in_the_boundary_exists_where_it_is_named():
    """The boundary looks user errors up by module path: a class moved without updating
    USER_ERRORS would turn a user's mistake into a traceback."""
    import importlib

    for module, name in errors.USER_ERRORS:
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, Exception), (module, name)
