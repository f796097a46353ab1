"""How is an image folder laid out: which folder is the image root, which sub-folders are splits,
which are classes; layouts that could be read two ways are refused.

Two layouts are accepted (data.layout):
- pre-split: ROOT/train/<class>/..., ROOT/val|valid|validation/<class>/..., optional ROOT/test/
- classes: ROOT/<class>/..., split later by `data.split` ratios (see `trainer.data.splits`).
With data.layout=auto a folder that could be read either way (val/ and validation/; split-like
folders without train/; train/ beside other folders of images) stops with a DataError naming
what was found: the layout is never guessed. A root that only wraps one sub-folder (e.g.
`facade-dataset/角度正/` holding `0/` and `1/`) is descended into, with a note. Two class folders
that are one folder (a link) are refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from trainer.data.walk import (
    Progress,
    Walk,
    holds_images,
    list_images,
    loose_images,
    subfolders,
)

SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
SPLITS = ("train", "val", "test")
SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test"}
# Named like a split but not read as one: with data.layout=auto such a folder stops the scan.
SPLIT_LOOKALIKES = frozenset({"training", "testing", "eval", "evaluation", "trn", "tst"})

ClassFolders = dict[str, list[str]]  # class name -> its image files


class DataError(ValueError):
    """The image folder cannot be used as given; the message says which path and why."""


def unreadable_image(path: str, error: BaseException) -> DataError:
    """A file that failed to decode while training (data.check_images=false lets them in)."""
    return DataError(
        f"{path}: unreadable image ({type(error).__name__}: {error}); remove or fix it"
    )


def image_root_and_splits(
    folder: str | Path, layout: str, notes: list[str], need_train: bool = True
) -> tuple[Path, dict[str, Path] | None]:
    """The image root below `folder` (`find_image_root`) and its split folders, or None when its
    sub-folders are classes (`split_folders`). `need_train=False` for a folder to evaluate."""
    root = find_image_root(Path(folder).expanduser(), layout, notes)
    return root, split_folders(root, layout, notes, need_train)


def _split_alias(folder: Path) -> str | None:
    return SPLIT_ALIASES.get(folder.name.lower())


def _split_like(folder: Path) -> bool:
    return folder.name.lower() in SPLIT_ALIASES or folder.name.lower() in SPLIT_LOOKALIKES


def find_image_root(root: Path, layout: str = "auto", notes: list[str] | None = None) -> Path:
    """Descend through wrapper folders: no images and exactly one sub-folder, which itself has
    sub-folders (a lone folder of images is a class, not a wrapper). A sub-folder named like a
    split (train/, training/, ...) is descended only with data.layout=classes. Each step down
    is told in `notes`, so the root in use is never a surprise."""
    if not root.is_dir():
        raise DataError(f"data.root: {str(root)!r} is not a folder")
    while True:
        subs = subfolders(root)
        if len(subs) != 1 or loose_images(root) or not subfolders(subs[0]):
            return root
        if layout != "classes" and _split_like(subs[0]):
            return root
        if notes is not None:
            notes.append(f"{root} holds only the folder {subs[0].name}/: using it as the root")
        root = subs[0]


def _names(folders: Sequence[Path]) -> str:
    shown = ", ".join(f"{p.name}/" for p in folders[:8])
    return shown + (f" and {len(folders) - 8} more" if len(folders) > 8 else "")


def _layout_error(root: Path, found: str, question: str) -> DataError:
    return DataError(
        f"data.root: {root} {found}: {question} Say which layout is meant: "
        "data.layout=pre-split (train/, val|valid|validation/, test/ of class folders) or "
        "data.layout=classes (every sub-folder is a class, split by data.split)"
    )


def split_folders(
    root: Path, layout: str, notes: list[str], need_train: bool = True
) -> dict[str, Path] | None:
    """The split folders of an image root ({"train": ..., "val": ..., "test": ...}, in that
    order), or None when its sub-folders are classes. Never guesses: with data.layout=auto a
    folder that could be read both ways raises DataError saying what was found."""
    if layout == "classes":
        return None
    subs = subfolders(root)
    named = [p for p in subs if _split_alias(p)]
    lookalikes = [p for p in subs if _split_like(p) and not _split_alias(p)]
    if layout == "auto" and not named and not lookalikes:
        return None
    for kind in SPLITS:
        same = [p for p in named if _split_alias(p) == kind]
        if len(same) > 1:
            found = f"has {' and '.join(f'{p.name}/' for p in same)}"
            question = (
                f"which one is the {SPLIT_WORDS[kind]} split? Keep one (rename or move the other)."
            )
            if layout == "pre-split":
                raise DataError(f"data.layout=pre-split: {root} {found}: {question}")
            raise _layout_error(root, found, question)
    splits = {kind: p for kind in SPLITS for p in named if _split_alias(p) == kind}
    if layout == "pre-split" and (not splits or (need_train and "train" not in splits)):
        wanted = "train/" if need_train else "train/, val/ or test/"
        raise DataError(
            f"data.layout=pre-split: {root} has no {wanted} folder (found: {_names(subs)}); "
            "name the split folders so, or set data.layout=classes if these are classes"
        )
    if layout == "auto":
        _refuse_unclear(
            root, splits, lookalikes, [p for p in subs if not _split_like(p)], need_train
        )
    _note_unused(splits, [p for p in subs if p not in splits.values()], notes)
    return splits


def _refuse_unclear(
    root: Path,
    splits: dict[str, Path],
    lookalikes: list[Path],
    others: list[Path],
    need_train: bool,
) -> None:
    """data.layout=auto: stop where split folders could be classes or the other way round."""
    split_names = _names(sorted([*splits.values(), *lookalikes]))
    if need_train and "train" not in splits:
        raise _layout_error(
            root,
            f"has folders named like splits ({split_names}) but no train/",
            "are they splits (then name the training one train/) or classes?",
        )
    if not splits:
        raise _layout_error(
            root,
            f"has folders named like splits ({split_names}) but none is read as one "
            "(train/, val|valid|validation/, test/)",
            "are they splits (then rename them) or classes?",
        )
    if lookalikes:
        raise _layout_error(
            root,
            f"has {_names(lookalikes)} beside {_names(list(splits.values()))}",
            "the split names read are train/, val|valid|validation/ and test/: is "
            f"{lookalikes[0].name}/ a split (rename it) or a class?",
        )
    with_images = [p for p in others if holds_images(p)]
    if with_images:
        raise _layout_error(
            root,
            f"has split folders ({split_names}) and other folders with images "
            f"({_names(with_images)})",
            f"is {_names(list(splits.values()))} a split or a class?",
        )
    for p in splits.values():
        if loose_images(p) and not subfolders(p):
            raise _layout_error(
                root,
                f"has images directly in {p.name}/, not in class folders",
                f"is {p.name}/ a split or a class?",
            )


def _note_unused(splits: dict[str, Path], unused: list[Path], notes: list[str]) -> None:
    """Folders and images a pre-split layout does not read, so none is left out silently."""
    if unused:
        notes.append(f"pre-split layout: ignoring folders that are not splits: {_names(unused)}")
    for p in splits.values():
        note_loose_images(p, notes)


def note_loose_images(folder: Path, notes: list[str]) -> None:
    """Images directly in a folder whose sub-folders are classes are in no class: told, not used."""
    loose = loose_images(folder)
    if loose:
        notes.append(f"{len(loose)} images directly in {folder} are in no class folder: not used")


def class_folders(split_dir: Path, walk: Walk) -> ClassFolders:
    """{class: its images}; two class folders that are one folder (a link) are refused: which
    name is the class cannot be told, and two classes of the same images train nothing."""
    dirs = subfolders(split_dir)
    walk.classes = {}
    for d in dirs:
        st = os.stat(d)
        first = walk.classes.setdefault((st.st_dev, st.st_ino), (d.name, str(d)))
        if first[0] != d.name:
            other = Path(first[1])
            link, target = (other, d) if other.is_symlink() and not d.is_symlink() else (d, other)
            raise DataError(f"{link}/ and {target}/ are the same folder: remove one link")
    tree = {}
    with Progress(f"indexing {split_dir}") as progress:
        for d in dirs:
            walk.owner = d.name
            tree[d.name] = list_images(d, walk, progress)
    return tree
