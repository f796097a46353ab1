"""The demo data writers never write into a folder they did not finish themselves.

A tester's `trainer demo --data mydigits` wrote the digits over their own mydigits/0/0000.png
and mixed 1,797 images into the folder: a user's files are never overwritten or added to.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.cli import main
from trainer.data.demo import write_digits, write_lfw_faces, write_photo_crops
from trainer.data.layout import DataError


def _faces(folder: Path) -> Path:
    pytest.importorskip("skimage")
    return write_lfw_faces(folder)


def _crops(folder: Path) -> Path:
    pytest.importorskip("skimage")
    return write_photo_crops(folder, per_class=2)


# Each writer, and a file name it writes: the user's file of that name must survive.
WRITERS = {
    "digits": (write_digits, "0/0000.png"),
    "faces": (_faces, "face/000.png"),
    "crops": (_crops, "astronaut/000.jpg"),
}


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root, by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def user_folder(tmp_path: Path, own_name: str) -> Path:
    """A user's folder holding a file of a name the writer uses, and one of their notes."""
    folder = tmp_path / "mine"
    (folder / own_name).parent.mkdir(parents=True)
    (folder / own_name).write_bytes(b"the user's own image, not a PNG at all")
    (folder / "notes.txt").write_text("my notes\n")
    return folder


@pytest.mark.parametrize("name", WRITERS)
def test_a_users_folder_is_refused_and_left_byte_for_byte(tmp_path, name):
    writer, own_name = WRITERS[name]
    folder = user_folder(tmp_path, own_name)
    before = snapshot(tmp_path)
    with pytest.raises(DataError) as e:
        writer(folder)
    message = str(e.value)
    assert repr(str(folder)) in message and "not empty" in message and ".complete" in message
    assert "new or empty folder" in message and "\n" not in message
    assert snapshot(tmp_path) == before  # nothing overwritten, nothing added


@pytest.mark.parametrize("name", WRITERS)
def test_a_file_or_a_path_under_a_file_is_refused(tmp_path, name):
    writer, _ = WRITERS[name]
    file = tmp_path / "digits.zip"
    file.write_bytes(b"a file, not a folder")
    for target in (file, file / "sub"):
        with pytest.raises(DataError, match=r"'.*digits\.zip' is a file, not a folder"):
            writer(target)
    assert snapshot(tmp_path) == {"digits.zip": b"a file, not a folder"}


def test_an_interrupted_write_is_refused_and_kept(tmp_path):
    folder = tmp_path / "digits"
    (folder / "0").mkdir(parents=True)
    (folder / "0" / "0000.png").write_bytes(b"half of an earlier demo's write")
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match="interrupted earlier write left, delete it"):
        write_digits(folder)
    assert snapshot(tmp_path) == before  # refused, and nothing deleted either


def test_an_empty_folder_is_written_and_a_finished_one_kept_as_is(tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    assert write_digits(folder) == folder
    first = snapshot(folder)
    assert len(first) == 1797 + 1 and ".complete" in first and "0/0000.png" in first
    assert write_digits(folder) == folder  # its own finished output: nothing to write
    assert snapshot(folder) == first


@pytest.mark.parametrize("kind", ["user folder", "file"])
def test_trainer_demo_refuses_in_one_line_with_exit_2(tmp_path, capsys, kind):
    if kind == "file":
        data = tmp_path / "digits.zip"
        data.write_bytes(b"a file")
    else:
        data = user_folder(tmp_path, "1/0001.png")
    before = snapshot(tmp_path)
    run = tmp_path / "run"
    assert main(["demo", "--data", str(data), "--output-dir", str(run), "train.epochs=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trainer demo: error: ") and "\n" not in err and str(data) in err
    assert snapshot(tmp_path) == before and not run.exists()  # stopped before any writing
