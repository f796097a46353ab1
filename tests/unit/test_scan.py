"""Bad files are found by decoding, named with a reason, cached, and left out of every split."""

import csv
import json
import os
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import cli_here, make_folder
from tests.image_corpus import BAD, GOOD_ODD, IGNORED, write_corpus
from trainer.cli import main
from trainer.config import DataConfig
from trainer.data import badfiles as scan_module
from trainer.data import splits as data_module
from trainer.data.badfiles import cache_file, check_file, check_files
from trainer.data.layout import DataError
from trainer.data.splits import scan, write_bad_files_csv
from trainer.data.transforms import load_rgb
from trainer.data.walk import list_images


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def corpus(tmp_path) -> Path:
    """Class 'a': 12 good images plus every awkward file; class 'b': 12 good images."""
    root = make_folder(tmp_path / "photos", ["a", "b"], 12)
    write_corpus(root / "a")
    return root


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """The files check_files decodes (in this process: fewer than a pool's worth)."""
    seen: list[str] = []

    def counting(path, max_pixels=None):
        seen.append(os.path.basename(path))
        return check_file(path, max_pixels)

    monkeypatch.setattr(scan_module, "check_file", counting)
    return seen


# --------------------------------------------------------------------------- one file


def test_each_bad_file_gets_its_kind_of_reason(corpus):
    assert Image.MAX_IMAGE_PIXELS < 20000 * 20000  # huge.png is over the default limit
    for name, reason in BAD.items():
        got = check_file(corpus / "a" / name)
        assert got is not None and got.startswith(reason), (name, got)


@pytest.mark.parametrize("name", GOOD_ODD)
def test_odd_but_good_files_pass(corpus, name):
    assert check_file(corpus / "a" / name) is None


def test_16bit_grey_is_mid_grey_not_white(corpus):
    r, g, b = load_rgb(corpus / "a" / "gray16.png").getpixel((3, 3))
    assert r == g == b and abs(r - 128) <= 1  # 32768 / 65535 of full scale


def test_exif_rotation_turns_the_image_and_moves_the_corner(corpus):
    img = load_rgb(corpus / "a" / "exif6.jpg")
    assert img.size == (20, 40)  # 40 x 20 stored, displayed 90 degrees clockwise
    r, g, b = img.getpixel((15, 4))  # the red top-left block is now top-right
    assert r > 200 and g < 60 and b < 60
    r, g, b = img.getpixel((4, 4))
    assert r < 60


def test_pixel_limit_is_configurable_and_read_from_the_header(corpus, monkeypatch):
    path = corpus / "a" / "img_000.png"  # 40 x 40
    assert check_file(path, max_pixels=1600) is None
    reason = check_file(path, max_pixels=1599)
    assert reason == "40 x 40 = 1,600 pixels is over the limit of 1,599 (data.max_image_pixels)"

    # Over the limit means no decoding at all: load() is never reached.
    def fail(self):
        raise AssertionError("decoded an over-limit image")

    monkeypatch.setattr(Image.Image, "load", fail)
    assert check_file(corpus / "a" / "huge.png").startswith(BAD["huge.png"])


def test_pillow_settings_are_restored(corpus):
    before = Image.MAX_IMAGE_PIXELS
    check_file(corpus / "a" / "huge.png")
    check_file(corpus / "a" / "img_000.png", max_pixels=10)
    assert Image.MAX_IMAGE_PIXELS == before


# --------------------------------------------------------------------------- many files, cache


def test_check_files_names_only_the_bad_ones(corpus):
    paths = [str(p) for p in sorted((corpus / "a").iterdir())]
    bad = check_files(paths)
    assert {Path(p).name for p in bad} == set(BAD) | set(IGNORED)  # given as paths, checked


def test_pool_and_in_process_agree(tmp_path):
    root = make_folder(tmp_path / "many", ["a"], 150, size=16)  # over one pool's worth
    write_corpus(root / "a")
    paths = list_images(root / "a")
    assert check_files(paths, workers=2) == check_files(paths, workers=1)
    assert {Path(p).name for p in check_files(paths, workers=2)} == set(BAD)


def test_second_check_decodes_nothing_and_a_changed_file_again(corpus, decodes):
    paths = list_images(corpus / "a")
    cache = cache_file(corpus)
    first = check_files(paths, cache=cache)
    assert len(decodes) == len(paths) and cache.is_file()
    decodes.clear()
    assert check_files(paths, cache=cache) == first
    assert decodes == []
    (corpus / "a" / "img_003.png").write_bytes(b"")  # size and mtime change
    second = check_files(paths, cache=cache)
    assert decodes == ["img_003.png"]
    assert second[str(corpus / "a" / "img_003.png")] == "empty file (0 bytes)"


def test_another_pixel_limit_decodes_again(corpus, decodes):
    paths = [str(p) for p in sorted((corpus / "b").iterdir())]
    cache = cache_file(corpus)
    assert check_files(paths, cache=cache) == {}
    decodes.clear()
    assert len(check_files(paths, max_pixels=100, cache=cache)) == len(paths)
    assert len(decodes) == len(paths)


def test_corrupt_cache_is_ignored_and_rebuilt(corpus, decodes):
    paths = list_images(corpus / "a")
    cache = cache_file(corpus)
    cache.parent.mkdir(parents=True)
    cache.write_text('{"version": 1, "files": {"x": [1,', encoding="utf-8")
    assert {Path(p).name for p in check_files(paths, cache=cache)} == set(BAD)
    assert len(decodes) == len(paths)
    assert len(json.loads(cache.read_text(encoding="utf-8"))["paths"]) == len(paths)
    assert not list(cache.parent.glob("*.tmp"))


# --------------------------------------------------------------------------- data.scan


def test_scan_leaves_bad_files_out_of_every_split(corpus):
    index = scan(DataConfig(root=str(corpus)))
    assert sorted(Path(p).name for p, _ in index.bad_files) == sorted(BAD)
    indexed = [Path(p).name for items in index.splits.values() for p, _ in items]
    assert len(indexed) == 24 + len(GOOD_ODD)
    assert not set(indexed) & (set(BAD) | set(IGNORED))
    assert (
        index.notes[0] == f"{len(BAD)} bad files skipped, listed in bad_files.csv of the run folder"
    )
    assert sorted(Path(p).name for p in index.ignored) == sorted(IGNORED)
    assert any("3 files ignored as not images" in n and "Thumbs.db" in n for n in index.notes)


def test_split_of_the_good_files_does_not_depend_on_the_bad_ones(tmp_path, corpus):
    clean = make_folder(tmp_path / "clean", ["a", "b"], 12)
    write_corpus(tmp_path / "odd")
    for name in GOOD_ODD:
        (clean / "a" / name).write_bytes((tmp_path / "odd" / name).read_bytes())
    with_bad, without = scan(DataConfig(root=str(corpus))), scan(DataConfig(root=str(clean)))

    def rel(index):
        return {
            s: [(os.path.relpath(p, index.root), y) for p, y in v] for s, v in index.splits.items()
        }

    assert rel(with_bad) == rel(without) and without.bad_files == []


def test_bad_files_csv_is_relative_to_the_root(corpus, tmp_path):
    index = scan(DataConfig(root=str(corpus)))
    write_bad_files_csv(index, tmp_path / "bad_files.csv")
    with open(tmp_path / "bad_files.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["path"] for r in rows} == {f"a/{name}" for name in BAD}
    assert all(r["reason"].startswith(BAD[r["path"][2:]]) for r in rows)


def test_on_bad_file_error_names_the_files_and_the_way_out(corpus):
    with pytest.raises(DataError) as err:
        scan(DataConfig(root=str(corpus), on_bad_file="error"))
    text = str(err.value)
    assert f"{len(BAD)} bad image files" in text and "a/truncated.jpg: truncated JPEG" in text
    assert "data.on_bad_file=skip" in text


def test_a_killed_decoding_process_is_a_data_error(corpus, monkeypatch):
    def killed(*args, **kwargs):
        raise BrokenProcessPool("a child process terminated abruptly")

    monkeypatch.setattr(data_module, "check_files", killed)
    with pytest.raises(DataError, match="data.max_image_pixels"):
        scan(DataConfig(root=str(corpus)))


def test_check_images_off_indexes_every_image_file(corpus):
    index = scan(DataConfig(root=str(corpus), check_images=False))
    assert index.bad_files == [] and sum(index.counts().values()) == 24 + len(GOOD_ODD) + len(BAD)


def test_a_class_of_only_bad_files_is_left_out_with_a_note(corpus):
    (corpus / "c").mkdir()
    (corpus / "c" / "broken.jpg").write_bytes(b"")
    (corpus / "d").mkdir()  # empty from the start
    index = scan(DataConfig(root=str(corpus)))
    assert index.class_names == ["a", "b"]
    assert any(f"{corpus / 'c'} holds no usable images" in n for n in index.notes)
    assert any(f"{corpus / 'd'} holds no usable images" in n for n in index.notes)


def test_one_usable_class_is_an_error_naming_the_folder(tmp_path):
    root = make_folder(tmp_path / "d", ["a"], 5)
    (root / "b").mkdir()
    (root / "b" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(
        DataError, match=r"needs at least 2 class sub-folders with images, found 1 \(a\)"
    ):
        scan(DataConfig(root=str(root)))


def test_pre_split_bad_files_are_left_out_of_their_split(tmp_path):
    root = tmp_path / "pre"
    make_folder(root / "train", ["a", "b"], 6)
    make_folder(root / "val", ["a", "b"], 3, seed=1)
    (root / "val" / "b" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    index = scan(DataConfig(root=str(root)))
    assert index.layout == "pre-split"
    assert [os.path.relpath(p, root) for p, _ in index.bad_files] == ["val/b/cut.png"]
    assert index.counts() == {"train": 12, "val": 6}
    assert index.bad_files[0][1].startswith("corrupt PNG")


# --------------------------------------------------------------------------- trainer scan


def test_cli_scan_prints_table_and_bad_files_and_exits_0(corpus):
    proc = cli_here("trainer", "scan", str(corpus), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "ratio-split" in out and f"bad files: {len(BAD)}" in out
    for name in BAD:
        assert f"  a/{name}: {BAD[name]}" in out
    header, row_a = next(
        (lines[i], lines[i + 1])
        for lines in [out.splitlines()]
        for i, line in enumerate(lines)
        if line.startswith("class")
    )
    assert header.split() == ["class", "train", "val", "test", "total"]
    assert row_a.split()[0] == "a" and row_a.split()[-1] == str(12 + len(GOOD_ODD))
    assert "files ignored as not images" in out and "Thumbs.db" in out


def test_cli_scan_json(corpus, tmp_path, capsys):
    assert main(["scan", str(corpus), "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)  # nothing but the JSON on stdout
    assert report["layout"] == "ratio-split" and report["classes"] == ["a", "b"]
    assert sum(report["counts"][s]["a"] for s in report["counts"]) == 12 + len(GOOD_ODD)
    assert {b["path"]: b["reason"][:10] for b in report["bad_files"]} == {
        f"a/{name}": reason[:10] for name, reason in BAD.items()
    }
    assert sorted(report["ignored"]) == sorted(f"a/{name}" for name in IGNORED)
    assert report["notes"]

    assert main(["scan", str(corpus), "--json", str(tmp_path / "r.json")]) == 0
    assert "class" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8")) == report


@pytest.mark.parametrize(
    "args, message",
    [
        (["one-class"], "needs at least 2 class sub-folders"),
        (["missing"], "'missing' is not a folder"),
        (["two", "--workers", "0"], "--workers: expected >= 1, got 0"),
        (["two", "--max-image-pixels", "-5"], "--max-image-pixels: expected >= 1, got -5"),
    ],
)
def test_cli_scan_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys, args, message):
    make_folder(tmp_path / "one-class", ["a"], 3)
    make_folder(tmp_path / "two", ["a", "b"], 3)
    monkeypatch.chdir(tmp_path)
    assert main(["scan", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trainer scan: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_cli_scan_of_an_unusable_folder_exits_2_without_traceback(tmp_path):
    root = make_folder(tmp_path / "one-class", ["a"], 3)
    proc = cli_here("trainer", "scan", str(root))
    assert proc.returncode == 2
    assert proc.stderr.startswith("trainer scan: error: ") and "Traceback" not in proc.stderr
