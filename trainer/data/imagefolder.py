"""Scan a class-per-folder image tree once, split it, and serve it through Hugging Face `datasets`.

Two layouts are accepted (data.layout):
- pre-split: ROOT/train/<class>/..., ROOT/val|valid|validation/<class>/..., optional ROOT/test/
- classes: ROOT/<class>/... split by `data.split` ratios, stratified per class, reproducibly.
With data.layout=auto a folder that could be read either way (val/ and validation/; split-like
folders without train/; train/ beside other folders of images) stops with a DataError naming
what was found: the layout is never guessed. A root that only wraps one sub-folder (e.g.
`facade-dataset/角度正/` holding `0/` and `1/`) is descended into, with a note. Symlinks are
followed once per real folder and each real image is listed once; two class folders that are one
folder (a link) are refused, an image or folder linked into two classes is used in one, with a
note, and a class folder is never entered from another class. The index is built with
`os.scandir` (fast on large trees) and handed to `datasets` as explicit file paths, so
`datasets`' own imagefolder resolver is never run.
With `data.check_images`, every indexed file is decoded once (`trainer.scan`, cached) and bad
files are left out before the split, so the split of the good files is the same on every rank.
"""

from __future__ import annotations

import csv
import os
import zlib
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.config import DataConfig
from trainer.data.badfiles import cache_file, check_files

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
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


class DataError(ValueError):
    """The image folder cannot be used as given; the message says which path and why."""


@dataclass
class DataIndex:
    """Every usable image, per split, as (path, label index) pairs."""

    root: Path
    class_names: list[str]
    layout: str  # "pre-split" or "ratio-split"
    splits: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # things the user should hear about
    bad_files: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), left out
    ignored: list[str] = field(default_factory=list)  # files that are not images by their name

    def counts(self) -> dict[str, int]:
        return {name: len(items) for name, items in self.splits.items()}

    def class_counts(self, split: str) -> list[int]:
        """Images per class (by label index) in one split."""
        counts = [0] * len(self.class_names)
        for _, label in self.splits.get(split, []):
            counts[label] += 1
        return counts


def is_image_file(name: str) -> bool:
    """By extension; hidden files (.DS_Store, ._foo.jpg from macOS) and Thumbs.db are not images."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


Key = tuple[int, int]  # (st_dev, st_ino): a real file or folder, whatever path leads to it


@dataclass
class Walk:
    """What one scan has visited: every real folder is entered once (a symlink loop, or a second
    link to a folder, is not followed again) and every real file is listed once (by device and
    inode), however many links lead to it. The first path found in a sorted walk is kept; a
    class folder is never entered from another class (it keeps its own images)."""

    folders: dict[Key, tuple[str, str]] = field(default_factory=dict)  # -> (class, first path)
    files: dict[Key, tuple[str, str]] = field(default_factory=dict)  # -> (class, first path)
    classes: dict[Key, tuple[str, str]] = field(default_factory=dict)  # this split's class dirs
    owner: str = ""  # the class being listed
    ignored: list[str] = field(default_factory=list)  # not images by their name
    not_followed: list[str] = field(default_factory=list)  # links to folders already entered
    twice: list[str] = field(default_factory=list)  # images already listed through another path
    broken: list[str] = field(default_factory=list)  # links that lead nowhere
    two_labels: list[tuple[str, str]] = field(default_factory=list)  # (kept path, other class's)

    def notes(self, root: Path) -> list[str]:
        def some(paths: list[str]) -> str:
            shown = ", ".join(os.path.relpath(p, root) for p in sorted(paths)[:3])
            return shown + (", ..." if len(paths) > 3 else "")

        def pairs(found: list[tuple[str, str]]) -> str:
            def rel(path: str) -> str:
                return os.path.relpath(path, root) + ("/" if os.path.isdir(path) else "")

            shown = ", ".join(f"{rel(kept)} (also {rel(other)})" for kept, other in found[:3])
            return shown + (", ..." if len(found) > 3 else "")

        notes = []
        if self.not_followed:
            notes.append(
                f"{len(self.not_followed)} links lead to folders already scanned (a loop or a "
                f"second link), not followed again: {some(self.not_followed)}"
            )
        if self.twice:
            notes.append(
                f"{len(self.twice)} images reached a second time through links, counted once: "
                f"{some(self.twice)}"
            )
        if self.broken:
            notes.append(f"{len(self.broken)} broken links skipped: {some(self.broken)}")
        if self.two_labels:
            notes.append(
                f"{len(self.two_labels)} images or folders are linked into two classes and would "
                f"carry two labels; each is used in one class only: {pairs(self.two_labels)}"
            )
        return notes

    def seen_folder(self, top: str, key: Key) -> bool:
        """True if `top` is not to be entered: entered already, or another class's folder."""
        first = self.classes.get(key)
        if first is not None and first[0] != self.owner:
            self.two_labels.append((first[1], top))
            return True
        if key not in self.folders:
            self.folders[key] = (self.owner, top)
            return False
        owner, entered = self.folders[key]
        if owner != self.owner:
            self.two_labels.append((entered, top))
        else:
            self.not_followed.append(top)
        return True

    def seen_file(self, path: str, key: Key) -> bool:
        """True if the image at `path` was listed already (through another path)."""
        if key not in self.files:
            self.files[key] = (self.owner, path)
            return False
        owner, first = self.files[key]
        if owner != self.owner:
            self.two_labels.append((first, path))
        else:
            self.twice.append(path)
        return True


def list_images(folder: Path, walk: Walk | None = None) -> list[str]:
    """All image files below `folder` (recursively, links followed once), sorted so the order
    never depends on the disk. Other files (.DS_Store, notes.txt) go to `walk.ignored`."""
    walk = walk if walk is not None else Walk()
    found: list[str] = []
    stack = [str(folder)]
    while stack:
        top = stack.pop()
        st = os.stat(top)
        if walk.seen_folder(top, (st.st_dev, st.st_ino)):
            continue
        with os.scandir(top) as it:
            entries = sorted(it, key=lambda e: e.name)
        subfolders = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=True):
                if not entry.name.startswith("."):
                    subfolders.append(entry.path)
            elif not entry.is_file(follow_symlinks=True):
                if entry.is_symlink():
                    walk.broken.append(entry.path)
            elif not is_image_file(entry.name):
                walk.ignored.append(entry.path)
            else:
                # A plain entry's inode needs no stat call; a link's target does.
                key = (st.st_dev, entry.inode())
                if entry.is_symlink():
                    target = entry.stat(follow_symlinks=True)
                    key = (target.st_dev, target.st_ino)
                if not walk.seen_file(entry.path, key):
                    found.append(entry.path)
        stack.extend(reversed(subfolders))  # depth first, in name order: the same on every rank
    return sorted(found)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _loose_images(folder: Path) -> list[str]:
    """Image files directly in `folder` (not in a sub-folder)."""
    with os.scandir(folder) as it:
        return sorted(e.path for e in it if is_image_file(e.name) and e.is_file())


def _holds_images(folder: Path) -> bool:
    """Any image file below `folder`; stops at the first one."""
    stack, seen = [str(folder)], set()
    while stack:
        top = stack.pop()
        st = os.stat(top)
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(top) as it:
            for entry in it:
                if entry.is_dir() and not entry.name.startswith("."):
                    stack.append(entry.path)
                elif is_image_file(entry.name) and entry.is_file():
                    return True
    return False


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
        subs = _subdirs(root)
        if len(subs) != 1 or _loose_images(root) or not _subdirs(subs[0]):
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
    subs = _subdirs(root)
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
    with_images = [p for p in others if _holds_images(p)]
    if with_images:
        raise _layout_error(
            root,
            f"has split folders ({split_names}) and other folders with images "
            f"({_names(with_images)})",
            f"is {_names(list(splits.values()))} a split or a class?",
        )
    for p in splits.values():
        if _loose_images(p) and not _subdirs(p):
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
        loose = _loose_images(p)
        if loose:
            notes.append(f"{len(loose)} images directly in {p} are in no class folder: not used")


ClassFolders = dict[str, list[str]]  # class name -> its image files


def _class_folders(split_dir: Path, walk: Walk) -> ClassFolders:
    """{class: its images}; two class folders that are one folder (a link) are refused: which
    name is the class cannot be told, and two classes of the same images train nothing."""
    dirs = _subdirs(split_dir)
    walk.classes = {}
    for d in dirs:
        st = os.stat(d)
        first = walk.classes.setdefault((st.st_dev, st.st_ino), (d.name, str(d)))
        if first[0] != d.name:
            other = Path(first[1])
            link, target = (other, d) if other.is_symlink() and not d.is_symlink() else (d, other)
            raise DataError(f"{link}/ and {target}/ are the same folder: remove one link")
    tree = {}
    for d in dirs:
        walk.owner = d.name
        tree[d.name] = list_images(d, walk)
    return tree


def scan(cfg: DataConfig, workers: int | None = None) -> DataIndex:
    """Index `cfg.root` into train/val/test lists; raises DataError for unusable folders and for
    layouts that could be read two ways (see `split_folders`; data.layout says which).

    With `cfg.check_images`, bad files (see `trainer.scan.check_file`) are found with `workers`
    processes (default: all CPUs) and left out before the split, or raise with
    `cfg.on_bad_file=error`. The verdicts are cached, so ranks that scan after the main one
    (`main_process_first`) only read them.
    """
    if not cfg.root:
        raise DataError("data.root is not set: pass data.root=/path/to/images")
    notes: list[str] = []
    root = find_image_root(Path(cfg.root).expanduser(), cfg.layout, notes)
    split_dirs = split_folders(root, cfg.layout, notes)
    walk = Walk()
    if split_dirs is not None:  # train first: an image linked into two splits stays in train
        trees = {s: _class_folders(d, walk) for s, d in split_dirs.items()}
    else:
        trees = {"all": _class_folders(root, walk)}
        loose = _loose_images(root)
        if loose:
            notes.append(f"{len(loose)} images directly in {root} are in no class folder: not used")
    bad = _find_bad_files(trees, root, cfg, workers)
    trees = {s: _without(tree, bad) for s, tree in trees.items()}
    if split_dirs is not None:
        index = _scan_pre_split(root, split_dirs, trees, cfg)
    else:
        index = _scan_and_split(root, trees["all"], cfg)
    index.notes[:0] = notes
    index.bad_files, index.ignored = sorted(bad.items()), sorted(walk.ignored)
    if bad:
        index.notes.insert(
            0, f"{len(bad)} bad files skipped, listed in bad_files.csv of the run folder"
        )
    if walk.ignored:
        names = ", ".join(sorted({Path(p).name for p in walk.ignored})[:5])
        index.notes.append(
            f"{len(walk.ignored)} files ignored as not images by their name ({names})"
        )
    index.notes.extend(walk.notes(root))
    return _warn_small_classes(index)


MAX_LISTED = 10  # bad files named in an error message; `trainer scan` lists them all


def _find_bad_files(
    trees: dict[str, ClassFolders], root: Path, cfg: DataConfig, workers: int | None
) -> dict[str, str]:
    if not cfg.check_images:
        return {}
    paths = [f for tree in trees.values() for files in tree.values() for f in files]
    try:
        bad = check_files(paths, cfg.max_image_pixels, workers, cache_file(root))
    except BrokenProcessPool:  # a decoding process was killed, e.g. out of memory
        raise DataError(
            f"a process checking the images in {root} died (out of memory on a huge image?): "
            "lower data.max_image_pixels, or turn the check off with data.check_images=false"
        ) from None
    if bad and cfg.on_bad_file == "error":
        raise _bad_files_error(bad, root)
    return bad


def _bad_files_error(bad: dict[str, str], root: Path) -> DataError:
    listed = [f"  {os.path.relpath(p, root)}: {bad[p]}" for p in sorted(bad)[:MAX_LISTED]]
    more = [f"  ... and {len(bad) - MAX_LISTED} more"] if len(bad) > MAX_LISTED else []
    way_out = (
        "fix or remove them, or set data.on_bad_file=skip to train without them "
        f"(`trainer scan {root}` lists them all)"
    )
    head = f"{len(bad)} bad image files in {root} (data.on_bad_file=error):"
    return DataError("\n".join([head, *listed, *more, way_out]))


def _without(tree: ClassFolders, bad: dict[str, str]) -> ClassFolders:
    return {name: [f for f in files if f not in bad] for name, files in tree.items()}


def _usable_classes(folders: ClassFolders, where: Path, notes: list[str]) -> list[str]:
    names = []
    for name, files in folders.items():
        if files:
            names.append(name)
        else:
            notes.append(f"class folder {where / name} holds no usable images; skipped")
    if len(names) < 2:
        raise DataError(
            f"data.root: {str(where)!r} needs at least 2 class sub-folders with images, "
            f"found {len(names)}{' (' + ', '.join(names) + ')' if names else ''}"
        )
    return sorted(names)


FEW_IMAGES = 10  # a class with fewer training images than this gets a warning


def _warn_small_classes(index: DataIndex) -> DataIndex:
    for name, n in zip(index.class_names, index.class_counts("train")):
        if n < FEW_IMAGES:
            index.notes.append(
                f"class {name!r} has only {n} training images: its numbers will be noisy; more "
                f"images help most (train.class_weights=balanced or data.sampler=balanced for imbalance)"
            )
    return index


def _scan_pre_split(
    root: Path, split_dirs: dict[str, Path], trees: dict[str, ClassFolders], cfg: DataConfig
) -> DataIndex:
    notes: list[str] = []
    train_folders = trees["train"]
    class_names = _usable_classes(train_folders, split_dirs["train"], notes)
    label_of = {name: i for i, name in enumerate(class_names)}
    index = DataIndex(root, class_names, "pre-split", notes=notes)
    index.splits["train"] = [(f, label_of[c]) for c in class_names for f in train_folders[c]]
    for split in ("val", "test"):
        if split not in split_dirs:
            continue
        folders = {c: fs for c, fs in trees[split].items() if fs}
        unknown = sorted(set(folders) - set(label_of))
        if unknown:
            raise DataError(
                f"{split_dirs[split]}: classes {unknown} are not in {split_dirs['train']} "
                f"(known: {class_names})"
            )
        index.splits[split] = [(f, label_of[c]) for c in sorted(folders) for f in folders[c]]
        missing = [c for c in class_names if c not in folders]
        if missing:
            notes.append(
                f"{split_dirs[split]} has no images of {len(missing)} of the {len(class_names)} "
                f"classes ({', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''}): "
                f"its {split} numbers say nothing about them"
            )
    if "val" not in index.splits:
        # No val/ folder: hold out the val share of train, stratified, so model selection still works.
        val_ratio = cfg.split[1] / (cfg.split[0] + cfg.split[1])
        parts = stratified_split(
            index.splits["train"], [1 - val_ratio, val_ratio, 0.0], cfg.split_seed
        )
        index.splits["train"], index.splits["val"] = parts[0], parts[1]
        notes.append(f"no val/ folder: held out {val_ratio:.0%} of train/ as validation")
    return index


def _scan_and_split(root: Path, folders: ClassFolders, cfg: DataConfig) -> DataIndex:
    notes: list[str] = []
    class_names = _usable_classes(folders, root, notes)
    items = [(f, i) for i, c in enumerate(class_names) for f in folders[c]]
    parts = stratified_split(items, cfg.split, cfg.split_seed, class_names)
    index = DataIndex(root, class_names, "ratio-split", notes=notes)
    index.splits = {s: p for s, p in zip(SPLITS, parts) if p or s == "train"}
    return index


def stratified_split(
    items: Sequence[tuple[str, int]],
    ratios: Sequence[float],
    seed: int,
    class_names: Sequence[str] | None = None,
) -> list[list[tuple[str, int]]]:
    """Split (path, label) pairs into len(ratios) parts with the same class mix in each.

    Each class is shuffled by its own generator, seeded from `seed` and the class name, so adding
    a class or files to one class never moves the files of another. Every class keeps >= 1 image
    in the first (train) part.
    """
    by_label: dict[int, list[str]] = {}
    for path, label in items:
        by_label.setdefault(label, []).append(path)
    parts: list[list[tuple[str, int]]] = [[] for _ in ratios]
    for label in sorted(by_label):
        paths = sorted(by_label[label])
        name = class_names[label] if class_names else str(label)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
        order = rng.permutation(len(paths))
        n = len(paths)
        sizes = [round(n * r) for r in ratios[1:]]
        while n - sum(sizes) < 1 and any(sizes):  # keep one image for training
            sizes[max(range(len(sizes)), key=lambda i: sizes[i])] -= 1
        bounds = np.cumsum([n - sum(sizes), *sizes])
        start = 0
        for part, end in zip(parts, bounds):
            part.extend((paths[i], label) for i in order[start:end])
            start = end
    return [sorted(p) for p in parts]


def labelled_items(
    folder: str | Path, class_names: list[str], split: str = "auto", layout: str = "auto"
) -> list[tuple[str, int]]:
    """(path, label) pairs of a class-per-folder tree, labelled by a trained model's class names.

    `folder` may be pre-split; `split` picks train/val/test ("auto": test, else val, else train).
    The same layout rules as `scan` (a pre-split folder needs no train/ here).
    """
    notes: list[str] = []
    root = find_image_root(Path(folder).expanduser(), layout, notes)
    split_dirs = split_folders(root, layout, notes, need_train=False)
    if split_dirs:
        if split == "auto":
            split = next(s for s in ("test", "val", "train") if s in split_dirs)
        if split not in split_dirs:
            raise DataError(
                f"--split {split}: {root} has no such split (has: {', '.join(sorted(split_dirs))})"
            )
        root = split_dirs[split]
    elif split not in ("auto", "all"):
        raise DataError(f"--split {split}: {root} is not pre-split; leave --split out")
    folders = {c: fs for c, fs in _class_folders(root, Walk()).items() if fs}
    unknown = sorted(set(folders) - set(class_names))
    if unknown:
        raise DataError(
            f"{root}: classes {unknown} are unknown to the model (it knows {class_names})"
        )
    if not folders:
        raise DataError(f"{root}: no class sub-folders with images")
    label_of = {c: i for i, c in enumerate(class_names)}
    return [(f, label_of[c]) for c in sorted(folders) for f in folders[c]]


def write_splits_csv(index: DataIndex, path: Path) -> None:
    """RUN_DIR/splits.csv: which file went to which split, so every number can be traced."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "label", "path"])
        for split, items in index.splits.items():
            for p, label in items:
                writer.writerow([split, index.class_names[label], os.path.relpath(p, index.root)])


def write_bad_files_csv(index: DataIndex, path: Path) -> None:
    """RUN_DIR/bad_files.csv: the files left out because they do not decode, and why."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        for p, reason in index.bad_files:
            writer.writerow([os.path.relpath(p, index.root), reason])
