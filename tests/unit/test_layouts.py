"""Folder layouts are never guessed: an image folder that could be read as splits or as classes
stops with what was found and data.layout=pre-split|classes; symlinks are followed once."""

import os
from pathlib import Path

import pytest

from tests.conftest import cli_here, make_folder, make_pre_split
from trainer.config import DataConfig
from trainer.data.layout import DataError, find_image_root
from trainer.data.splits import labelled_items, list_images, scan


def scan_of(root: Path, layout: str = "auto", **kw):
    return scan(DataConfig(root=str(root), layout=layout, check_images=False, **kw))


def refused(root: Path, *names: str, layout: str = "auto") -> str:
    """The DataError of scanning `root`; it names every one of `names`."""
    with pytest.raises(DataError) as caught:
        scan_of(root, layout)
    message = str(caught.value)
    for name in names:
        assert name in message, message
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- data.layout=auto


@pytest.mark.parametrize("second", ["validation", "valid"])
def test_val_and_validation_together_stop_naming_both(tmp_path, second):
    root = make_pre_split(tmp_path / "d", ["x", "y"], {"train": 3, "val": 2})
    make_folder(root / second, ["x", "y"], 2)
    refused(root, "val/", f"{second}/", "data.layout=pre-split", "data.layout=classes")
    # Explicit pre-split cannot pick one either; classes reads them all as classes.
    refused(root, "val/", f"{second}/", layout="pre-split")
    assert scan_of(root, "classes").class_names == sorted(["train", "val", second])


@pytest.mark.parametrize(
    "folders", [["val", "test"], ["training", "validation"], ["training", "testing"]]
)
def test_split_like_folders_without_train_stop(tmp_path, folders):
    root = tmp_path / "d"
    for name in folders:
        make_folder(root / name, ["x", "y"], 2)
    refused(root, *(f"{n}/" for n in folders), "no train/", "data.layout=")
    refused(root, "no train/", layout="pre-split")
    index = scan_of(root, "classes", split=[1.0, 0.0, 0.0])
    assert index.layout == "ratio-split" and index.class_names == sorted(folders)


def test_class_named_like_a_split_beside_classes_stops(tmp_path):
    root = make_folder(tmp_path / "vehicles", ["bus", "car", "train"], 4)
    refused(root, "train/", "bus/", "car/", "data.layout=pre-split", "data.layout=classes")
    index = scan_of(root, "classes")
    assert index.layout == "ratio-split" and index.class_names == ["bus", "car", "train"]
    assert sum(index.counts().values()) == 12


def test_split_folder_holding_images_itself_stops(tmp_path):
    root = make_folder(tmp_path / "d", ["train", "test"], 4)  # two classes named like splits
    refused(root, "train/", "data.layout=")
    assert scan_of(root, "classes").class_names == ["test", "train"]


def test_look_alike_split_beside_train_stops(tmp_path):
    root = make_pre_split(tmp_path / "d", ["x", "y"], {"train": 3, "val": 2})
    make_folder(root / "testing", ["x", "y"], 2)
    refused(root, "testing/", "train/", "data.layout=")
    index = scan_of(root, "pre-split")
    assert set(index.splits) == {"train", "val"}
    assert any("ignoring folders that are not splits: testing/" in n for n in index.notes)


def test_clear_layouts_still_need_no_setting(tmp_path):
    pre = make_pre_split(
        tmp_path / "p", ["x", "y"], {"train": 3, "val": 2, "test": 2}, "validation"
    )
    assert scan_of(pre).layout == "pre-split"
    (pre / "README-files").mkdir()  # a folder without images beside the splits: a note only
    (pre / "README-files" / "notes.txt").write_text("x")
    assert any("README-files/" in n for n in scan_of(pre).notes)
    classes = make_folder(tmp_path / "c", ["cat", "dog"], 5)
    assert scan_of(classes).layout == "ratio-split"


def test_explicit_pre_split_needs_train_and_ignores_other_folders_with_a_note(tmp_path):
    root = make_pre_split(tmp_path / "d", ["x", "y"], {"train": 3, "test": 2})
    make_folder(root, ["extra"], 2)
    refused(root, "extra/", "train/")  # auto: is extra/ a class?
    index = scan_of(root, "pre-split")
    assert index.class_names == ["x", "y"] and "test" in index.splits
    assert any("extra/" in n for n in index.notes)
    only_classes = make_folder(tmp_path / "c", ["cat", "dog"], 3)
    refused(only_classes, "data.layout=pre-split", "no train/", "cat/", layout="pre-split")


def test_split_missing_a_class_of_train_gets_a_note(tmp_path):
    root = make_pre_split(tmp_path / "d", ["x", "y", "z"], {"train": 3})
    make_folder(root / "val", ["x", "y"], 2)
    index = scan_of(root)
    assert any("val has no images of 1 of the 3 classes (z)" in n for n in index.notes)


# --------------------------------------------------------------------------- wrapper folders


def test_wrapper_folders_are_descended_with_a_note(tmp_path):
    outer = tmp_path / "download"
    make_pre_split(outer / "dataset", ["x", "y"], {"train": 3, "val": 2})
    index = scan_of(outer, "pre-split")
    assert index.root == outer / "dataset" and index.layout == "pre-split"
    assert any("holds only the folder dataset/" in n for n in index.notes)
    assert scan_of(outer).root == outer / "dataset"


def test_a_lone_split_folder_is_descended_only_for_classes(tmp_path):
    outer = make_folder(tmp_path / "d" / "train", ["cat", "dog"], 4).parent
    assert find_image_root(outer) == outer
    assert scan_of(outer).layout == "pre-split"  # train/ alone: val held out of it
    index = scan_of(outer, "classes")
    assert index.root == outer / "train" and index.class_names == ["cat", "dog"]
    training = make_folder(tmp_path / "e" / "training", ["cat", "dog"], 4).parent
    refused(training, "training/", "no train/")  # not read as a wrapper of classes


def test_a_lone_class_folder_is_not_taken_for_a_wrapper(tmp_path):
    root = make_folder(tmp_path / "d", ["only"], 3)
    refused(root, "found 1 (only)")


# --------------------------------------------------------------------------- symlinks


def test_symlink_loop_is_noted_and_not_followed(tmp_path):
    root = make_folder(tmp_path / "d", ["a", "b"], 3)
    os.symlink(root / "a", root / "a" / "again")  # a/again -> a: a loop
    index = scan_of(root, split=[1.0, 0.0, 0.0])
    assert index.counts() == {"train": 6}
    assert any("not followed again: a/again" in n for n in index.notes)


def test_an_image_reached_through_two_links_is_counted_once(tmp_path):
    root = make_folder(tmp_path / "d", ["a", "b"], 3)
    os.symlink(root / "a" / "img_000.png", root / "a" / "link.png")
    os.symlink(root / "a", root / "a" / "sub")  # a second way into the same class folder
    (root / "b" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    index = scan_of(root, split=[1.0, 0.0, 0.0])
    assert index.class_names == ["a", "b"] and index.counts() == {"train": 6}
    assert any("1 images reached a second time" in n and "a/link.png" in n for n in index.notes)
    assert any("a/sub" in n and "not followed" in n for n in index.notes)
    assert any("1 broken links skipped: b/gone.png" in n for n in index.notes)


@pytest.mark.parametrize("link", ["b-again", "a-first"])  # sorted after or before the real one
def test_a_class_folder_linked_as_a_second_class_is_refused(tmp_path, link):
    root = make_folder(tmp_path / "d", ["b", "c"], 3)
    os.symlink(root / "b", root / link)
    message = refused(root, f"{root / link}/ and {root / 'b'}/ are the same folder")
    assert message.endswith("remove one link")


def test_images_linked_into_two_classes_are_used_once_with_a_note(tmp_path):
    root = make_folder(tmp_path / "d", ["a", "b", "c"], 3)
    os.link(root / "a" / "img_000.png", root / "c" / "hard.png")  # two labels: a and c
    os.symlink(root / "b" / "img_001.png", root / "a" / "soft.png")
    os.symlink(root / "c", root / "a" / "all-of-c")  # a folder of class c inside class a
    index = scan_of(root, split=[1.0, 0.0, 0.0])
    assert index.counts() == {"train": 9}  # every real image once
    # a lists soft.png first (b's image, so b keeps 2); hard.png is a's; c keeps all of its own
    assert index.class_counts("train") == [4, 2, 3]
    (note,) = [n for n in index.notes if "linked into two classes" in n]
    for shown in ("a/img_000.png (also c/hard.png)", "a/soft.png (also b/img_001.png)"):
        assert shown in note, note
    assert "c/ (also a/all-of-c/)" in note, note


# --------------------------------------------------------------------------- trainer eval


def test_labelled_items_applies_the_same_rules(tmp_path):
    names = ["bus", "car", "train"]
    vehicles = make_folder(tmp_path / "v", names, 2)
    with pytest.raises(DataError, match="data.layout="):
        labelled_items(vehicles, names)
    assert len(labelled_items(vehicles, names, layout="classes")) == 6
    both = make_pre_split(tmp_path / "p", ["x", "y"], {"test": 2, "val": 2})
    make_folder(both / "validation", ["x", "y"], 1)
    with pytest.raises(DataError, match="val/ and validation/"):
        labelled_items(both, ["x", "y"])
    only_test = make_pre_split(tmp_path / "t", ["x", "y"], {"test": 2})
    assert all("/test/" in p for p, _ in labelled_items(only_test, ["x", "y"]))


# --------------------------------------------------------------------------- through the CLI


@pytest.mark.parametrize(
    "folders, named",
    [
        (["train/x", "train/y", "val/x", "validation/x"], ["val/", "validation/"]),
        (["training/x", "training/y", "validation/x"], ["training/", "no train/"]),
        (["bus", "car", "train"], ["train/", "bus/", "car/"]),
    ],
    ids=["val-and-validation", "no-train", "class-named-train"],
)
def test_cli_scan_of_an_ambiguous_layout_exits_2_naming_it(tmp_path, folders, named):
    root = tmp_path / "d"
    for i, name in enumerate(folders):
        make_folder(root, [name], 2, seed=i)
    proc = cli_here("trainer", "scan", str(root))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("trainer scan: error: ")
    # scan takes the layout as a flag, so the fix it names is the flag
    assert "--layout pre-split" in proc.stderr and "--layout classes" in proc.stderr
    for name in named:
        assert name in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    told = cli_here("trainer", "scan", str(root), "--layout", "classes")
    assert told.returncode == 0, told.stderr
    assert f"{len({f.split('/')[0] for f in folders})} classes" in told.stdout


def test_cli_scan_of_a_class_folder_link_exits_2_with_one_line(tmp_path):
    root = make_folder(tmp_path / "d", ["c0", "c1", "c2"], 2)
    os.symlink("c2", root / "c2link")
    proc = cli_here("trainer", "scan", str(root))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr == (
        f"trainer scan: error: {root / 'c2link'}/ and {root / 'c2'}/ are the same folder: "
        "remove one link\n"
    )


def test_an_unfinished_run_saved_before_data_layout_existed_continues(tmp_path):
    """Runs saved by a version without data.layout read their folder as layout=auto does: they
    continue; a changed layout is still refused."""
    from trainer.config import ConfigError, RunConfig, dump_yaml
    from trainer.train.resume import _check_same_settings

    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000001"
    saved = tmp_path / "run" / "config.yaml"
    saved.parent.mkdir()
    saved.write_text(dump_yaml(RunConfig()).replace("  layout: auto\n", ""))
    assert "layout" not in saved.read_text()
    _check_same_settings(RunConfig(), checkpoint)
    classes = RunConfig()
    classes.data.layout = "classes"
    with pytest.raises(ConfigError, match="data.layout: 'auto' -> 'classes'"):
        _check_same_settings(classes, checkpoint)


@pytest.mark.parametrize("layout", ["empty", "text files only", "one class folder as the root"])
def test_a_root_without_two_classes_of_images_is_refused_when_listed(tmp_path, layout):
    # Said while listing, before any decode: the cached pipeline once built a cache of no
    # images and then failed with a traceback (cannot mmap an empty file)
    root = tmp_path / "data"
    if layout == "empty":
        root.mkdir()
    elif layout == "text files only":
        for name in ("a", "b"):
            (root / name).mkdir(parents=True)
            (root / name / "notes.txt").write_text("x")
    else:
        make_folder(tmp_path / "folder", ["cat", "dog"], per_class=3)
        root = tmp_path / "folder" / "cat"
    with pytest.raises(DataError, match="needs at least 2 class sub-folders with images, found 0"):
        list_images(DataConfig(root=str(root)))
