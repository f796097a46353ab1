"""Scan a class-per-folder image tree once, split it, and serve it through Hugging Face `datasets`.

Two layouts are accepted:
- pre-split: ROOT/train/<class>/..., ROOT/val|valid|validation/<class>/..., optional ROOT/test/
- one folder: ROOT/<class>/... split by `data.split` ratios, stratified per class, reproducibly.
A root that only wraps one sub-folder (e.g. `facade-dataset/角度正/` holding `0/` and `1/`) is
descended into. The index is built with `os.scandir` (fast on large trees) and handed to
`datasets` as explicit file paths, so `datasets`' own imagefolder resolver is never run.
With `data.check_images`, every indexed file is decoded once (`trainer.scan`, cached) and bad
files are left out before the split, so the split of the good files is the same on every rank.
"""

from __future__ import annotations

import csv
import os
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

from trainer.config import DataConfig
from trainer.scan import cache_file, check_files
from trainer.transforms import load_rgb

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


def list_images(folder: Path, ignored: list[str] | None = None) -> list[str]:
    """All image files below `folder` (recursively), sorted so the order never depends on the disk.
    Other files (.DS_Store, notes.txt) are appended to `ignored` when it is given."""
    found: list[str] = []
    stack = [str(folder)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=True) and not entry.name.startswith("."):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=True):
                    if is_image_file(entry.name):
                        found.append(entry.path)
                    elif ignored is not None:
                        ignored.append(entry.path)
    return sorted(found)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_image_root(root: Path) -> Path:
    """Descend through folders that hold exactly one sub-folder and no images."""
    if not root.is_dir():
        raise DataError(f"data.root: {str(root)!r} is not a folder")
    while True:
        subs = _subdirs(root)
        has_images = any(p.is_file() and is_image_file(p.name) for p in root.iterdir())
        if len(subs) == 1 and not has_images and subs[0].name.lower() not in SPLIT_ALIASES:
            root = subs[0]
        else:
            return root


ClassFolders = dict[str, list[str]]  # class name -> its image files


def _class_folders(split_dir: Path, ignored: list[str] | None = None) -> ClassFolders:
    return {d.name: list_images(d, ignored) for d in _subdirs(split_dir)}


def scan(cfg: DataConfig, workers: int | None = None) -> DataIndex:
    """Index `cfg.root` into train/val/test lists; raises DataError for unusable folders.

    With `cfg.check_images`, bad files (see `trainer.scan.check_file`) are found with `workers`
    processes (default: all CPUs) and left out before the split, or raise with
    `cfg.on_bad_file=error`. The verdicts are cached, so ranks that scan after the main one
    (`main_process_first`) only read them.
    """
    if not cfg.root:
        raise DataError("data.root is not set: pass data.root=/path/to/images")
    root = find_image_root(Path(cfg.root).expanduser())
    split_dirs = {
        SPLIT_ALIASES[p.name.lower()]: p for p in _subdirs(root) if p.name.lower() in SPLIT_ALIASES
    }
    ignored: list[str] = []
    if "train" in split_dirs:
        trees = {s: _class_folders(d, ignored) for s, d in split_dirs.items()}
    else:
        trees = {"all": _class_folders(root, ignored)}
    bad = _find_bad_files(trees, root, cfg, workers)
    trees = {s: _without(tree, bad) for s, tree in trees.items()}
    if "train" in split_dirs:
        index = _scan_pre_split(root, split_dirs, trees, cfg)
    else:
        index = _scan_and_split(root, trees["all"], cfg)
    index.bad_files, index.ignored = sorted(bad.items()), sorted(ignored)
    if bad:
        index.notes.insert(
            0, f"{len(bad)} bad files skipped, listed in bad_files.csv of the run folder"
        )
    if ignored:
        names = ", ".join(sorted({Path(p).name for p in ignored})[:5])
        index.notes.append(f"{len(ignored)} files ignored as not images by their name ({names})")
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
    extra = [p.name for p in _subdirs(root) if p.name.lower() not in SPLIT_ALIASES]
    if extra:
        notes.append(f"pre-split layout: ignoring folders that are not splits: {', '.join(extra)}")
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
    folder: str | Path, class_names: list[str], split: str = "auto"
) -> list[tuple[str, int]]:
    """(path, label) pairs of a class-per-folder tree, labelled by a trained model's class names.

    `folder` may be pre-split; `split` picks train/val/test ("auto": test, else val, else train).
    """
    root = find_image_root(Path(folder).expanduser())
    split_dirs = {
        SPLIT_ALIASES[p.name.lower()]: p for p in _subdirs(root) if p.name.lower() in SPLIT_ALIASES
    }
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
    folders = {c: fs for c, fs in _class_folders(root).items() if fs}
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


class _ApplyTransform:
    """`datasets` on-the-fly transform: decode paths to RGB, apply a torchvision transform."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def _load(self, path: str):
        try:
            return self.transform(load_rgb(path))
        except (OSError, ValueError, SyntaxError) as e:  # what Pillow raises for broken files
            raise DataError(
                f"{path}: unreadable image ({type(e).__name__}: {e}); remove or fix it"
            ) from None

    def __call__(self, batch: dict) -> dict:
        pixels = [self._load(image["path"]) for image in batch["image"]]
        return {"pixel_values": pixels, "label": batch["label"], "index": batch["index"]}


def to_hf_dataset(
    items: Sequence[tuple[str, int]], class_names: list[str], transform: Callable
) -> datasets.Dataset:
    """A `datasets.Dataset` of (image path, ClassLabel, row index) decoded and transformed on the
    fly; the index maps gathered predictions back to files (e.g. for the mistakes gallery)."""
    features = datasets.Features(
        {
            "image": datasets.Image(decode=False),
            "label": datasets.ClassLabel(names=class_names),
            "index": datasets.Value("int64"),
        }
    )
    columns = {
        "image": [p for p, _ in items],
        "label": [label for _, label in items],
        "index": list(range(len(items))),
    }
    ds = datasets.Dataset.from_dict(columns, features=features)
    return ds.with_transform(_ApplyTransform(transform))
