"""predict / eval / export / train on mistakes and a full disk: one line, exit 2, nothing lost.

The commands run in-process through `cli.main` (seconds, not a fresh torch import each) on a
tiny untrained model folder; one training run goes into a full tmpfs in a subprocess.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import accelerate_launch, make_folder, train_smoke
from trainer import errors
from trainer.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def images(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    root = make_folder(tmp_path / "images", ["a", "b"], 3)
    (root / "a" / "broken.png").write_bytes(b"not an image")
    return root


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(err: str, command: str) -> str:
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"trainer {command}: error: "), err
    return last


def test_predict_to_stdout_writes_the_csv_alone_and_the_summary_to_stderr(
    model_dir, images, capsys
):
    assert main(["predict", str(model_dir), str(images), "--out", "-", "--num-workers", "0"]) == 0
    out, err = capsys.readouterr()
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["path", "label", "probability"] and len(rows) == 1 + 6
    assert "6 predictions -> stdout; 1 unreadable files skipped" in err
    assert "skipped unreadable image" in err and "broken.png" in err
    assert not Path("-").exists()


def test_predict_with_every_input_unreadable_exits_2_listing_them(model_dir, tmp_path, capsys):
    bad = [tmp_path / "x.jpg", tmp_path / "y.png"]
    for p in bad:
        p.write_bytes(b"garbage")
    out = tmp_path / "p.csv"
    argv = ["predict", str(model_dir), *map(str, bad), "--out", str(out), "--num-workers", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    line = _one_error_line(err, "predict")
    assert "none of the 2 images could be read" in line
    assert all(f"skipped unreadable image {p}" in err for p in bad)
    assert not out.exists()


def test_eval_skips_unreadable_files_like_train_and_lists_them(model_dir, images, capsys):
    report = images.parent / "e.json"
    argv = ["eval", str(model_dir), str(images), "--num-workers", "0", "--json", str(report)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "samples 6" in out and "1 unreadable files skipped" in out
    assert f"skipped unreadable image {images / 'a' / 'broken.png'}" in err
    result = json.loads(report.read_text(encoding="utf-8"))
    assert [b["path"] for b in result["bad_files"]] == [str(images / "a" / "broken.png")]


def test_a_model_folder_with_broken_config_json_exits_2_naming_it(model_dir, images, capsys):
    broken = images.parent / "broken-model"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
    (broken / "config.json").write_text('{"format": "trainer-model", ', encoding="utf-8")
    assert main(["predict", str(broken), str(images), "--num-workers", "0"]) == 2
    line = _one_error_line(capsys.readouterr().err, "predict")
    assert str(broken / "config.json") in line and "not valid JSON" in line


def test_export_into_a_folder_of_other_files_is_refused_and_changes_nothing(
    model_dir, tmp_path, capsys
):
    before = _snapshot(model_dir)
    argv = ["export", str(model_dir), "--format", "torchscript", "--out", str(model_dir)]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err, "export")
    assert f"--out {model_dir}" in line and "other files" in line
    assert _snapshot(model_dir) == before


def test_export_with_an_unreadable_image_exits_2_naming_it(model_dir, tmp_path, capsys):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"garbage")
    argv = ["export", str(model_dir), "--format", "torchscript", "--out", str(tmp_path / "e")]
    assert main([*argv, "--images", str(bad)]) == 2
    line = _one_error_line(capsys.readouterr().err, "export")
    assert f"--images {bad}" in line and "not a readable image" in line


def test_export_files_are_readable_by_others_as_the_umask_allows(model_dir, tmp_path, capsys):
    out = tmp_path / "e"
    old = os.umask(0o022)
    try:
        assert main(["export", str(model_dir), "--format", "torchscript", "--out", str(out)]) == 0
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        "model.pt": 0o644,
        "config.json": 0o644,
        "export.json": 0o644,
    }


# ----------------------------------------------------------------------------- a full disk


@pytest.fixture
def full_disk(tmp_path) -> Path:
    """A 2 MiB tmpfs filled to the last byte (needs root to mount; skipped otherwise)."""
    mount = tmp_path / "full"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")
    try:
        (mount / "keep.txt").write_text("the user's file\n", encoding="utf-8")
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _assert_no_space(line: str, mount: Path, path: Path) -> None:
    assert f"no space left on {mount} (tmpfs)" in line, line
    assert f"while writing {path}" in line and "free space" in line, line


def test_predictions_into_a_full_disk_exit_2_naming_the_mount_and_the_file(
    model_dir, images, full_disk, capsys
):
    out = full_disk / "p.csv"
    argv = ["predict", str(model_dir), str(images), "--out", str(out), "--num-workers", "0"]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err, "predict")
    _assert_no_space(line, full_disk, out)
    assert "--out" in line
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "keep.txt"]  # no half file


def test_eval_json_into_a_full_disk_exits_2_and_keeps_the_old_file(
    model_dir, images, full_disk, capsys
):
    out = full_disk / "keep.txt"  # an earlier --json (only those may be replaced)
    earlier = '{"accuracy": 0.5, "class_names": ["a", "b"]}'
    out.write_text(earlier, encoding="utf-8")  # fits the page the old text had
    argv = ["eval", str(model_dir), str(images), "--num-workers", "0", "--json", str(out)]
    assert main(argv) == 2
    _assert_no_space(_one_error_line(capsys.readouterr().err, "eval"), full_disk, out)
    assert out.read_text(encoding="utf-8") == earlier


def test_a_training_run_into_a_full_disk_exits_2_naming_the_mount(images, full_disk):
    run = full_disk / "run"
    proc = train_smoke(images, run, "train.epochs=1", "train.batch_size=4")
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_error_line(proc.stderr, "train")
    assert f"no space left on {full_disk} (tmpfs)" in line and str(run) in line, line
    assert "output_dir=" in line
    assert errors.mount_point(run) == str(full_disk)


@pytest.mark.slow(reason="2 gloo processes")
def test_on_two_processes_every_rank_exits_2_and_one_line_is_printed(model_dir, tmp_path):
    bad = [tmp_path / "x.jpg", tmp_path / "y.png", tmp_path / "z.png"]
    for p in bad:
        p.write_bytes(b"garbage")
    args = ("predict", str(model_dir), *map(str, bad), "--num-workers", "0")
    proc = accelerate_launch("-m", "trainer", *args, "--out", str(tmp_path / "p.csv"))
    assert proc.returncode != 0, proc.stderr[-3000:]
    # the launcher prints its own ChildFailedError traceback; none comes from trainer's code
    assert f"{os.sep}trainer{os.sep}" not in proc.stderr.split("ChildFailedError")[0]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("trainer predict:")]
    assert len(lines) == 1 and "none of the 3 images could be read" in lines[0], proc.stderr
    # the first rank to exit 2 is reported; the launcher may stop the other one with a signal
    assert "exitcode  : 2 " in proc.stderr and "exitcode  : 1 " not in proc.stderr


def test_predict_out_below_a_file_exits_2_naming_the_path(model_dir, images, capsys):
    (images.parent / "notes.txt").write_text("mine", encoding="utf-8")
    out = images.parent / "notes.txt" / "sub" / "p.csv"
    argv = ["predict", str(model_dir), str(images), "--out", str(out), "--num-workers", "0"]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err, "predict")
    assert str(images.parent / "notes.txt") in line and "not a folder" in line, line
    assert (images.parent / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_predict_into_a_read_only_file_system_exits_2_naming_the_mount(
    model_dir, images, tmp_path, capsys
):
    mount = tmp_path / "ro"
    mount.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mount)]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = mount / "p.csv"
        argv = ["predict", str(model_dir), str(images), "--out", str(out), "--num-workers", "0"]
        assert main(argv) == 2
        line = _one_error_line(capsys.readouterr().err, "predict")
        assert f"read-only file system ({mount})" in line and str(mount) in line, line
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
