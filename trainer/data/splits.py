"""Which images does a run use, in which split: the index of an image folder.

`scan` reads the layout (`trainer.data.layout`), lists each class folder's images once
(`trainer.data.walk`), leaves out bad files, and splits: a pre-split folder as its folders say
(holding out part of train/ as validation when there is no val/), a folder of classes by
`data.split` ratios, stratified per class, reproducibly. The index holds explicit file paths, so
`datasets`' own imagefolder resolver (slow on large trees) is never run.
With `data.check_images`, every indexed file is decoded once (`trainer.data.badfiles`, cached;
or, in a run of the cached pipeline, by the pixel cache's build: `list_images`, then `index`
with its verdicts) and bad files are left out before the split, so the split of the good files
is the same on every rank. `splits.csv` and `bad_files.csv` put the index in the run folder.
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
from trainer.data.badfiles import Verdicts, cache_file, check_files
from trainer.data.groups import index_groups, read_groups
from trainer.data.layout import (
    SPLITS,
    ClassFolders,
    DataError,
    class_folders,
    image_root_and_splits,
    note_loose_images,
)
from trainer.data.walk import Walk


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
        """Images per split."""
        return {name: len(items) for name, items in self.splits.items()}

    def class_counts(self, split: str) -> list[int]:
        """Images per class (by label index) in one split."""
        counts = [0] * len(self.class_names)
        for _, label in self.splits.get(split, []):
            counts[label] += 1
        return counts


@dataclass
class Listing:
    """A folder's image files before any is decoded: its layout and class folders."""

    root: Path
    split_dirs: dict[str, Path] | None  # None: one folder of classes, split by data.split
    trees: dict[str, ClassFolders]  # per split folder ("all" when not pre-split)
    walk: Walk
    notes: list[str]

    def paths(self) -> list[str]:
        """Every listed file once, in listing order."""
        return [f for tree in self.trees.values() for files in tree.values() for f in files]


def scan(cfg: DataConfig, workers: int | None = None) -> DataIndex:
    """Index `cfg.root` into train/val/test lists; raises DataError for unusable folders and for
    layouts that could be read two ways (see `layout.split_folders`; data.layout says which).

    With `cfg.check_images`, bad files (see `badfiles.check_file`) are found with `workers`
    processes (default: all CPUs) and left out before the split, or raise with
    `cfg.on_bad_file=error`. The verdicts are cached, so a second scan, or ranks that wait for
    the first, only read them.
    """
    listing = list_images(cfg)
    return index(listing, cfg, find_bad_files(listing, cfg, workers))


def list_images(cfg: DataConfig) -> Listing:
    """The layout and the class folders' image files of `cfg.root`, nothing decoded."""
    if not cfg.root:
        raise DataError("data.root is not set: pass data.root=/path/to/images")
    notes: list[str] = []
    root, split_dirs = image_root_and_splits(cfg.root, cfg.layout, notes)
    walk = Walk()
    if split_dirs is not None:  # train first: an image linked into two splits stays in train
        trees = {s: class_folders(d, walk) for s, d in split_dirs.items()}
    else:
        trees = {"all": class_folders(root, walk)}
        note_loose_images(root, notes)
    # Fewer than 2 classes with images is said now, before a pixel cache of nothing is built
    split, where = ("train", split_dirs["train"]) if split_dirs is not None else ("all", root)
    _usable_classes(trees[split], where, [])
    return Listing(root, split_dirs, trees, walk, notes)


def index(listing: Listing, cfg: DataConfig, bad: dict[str, str]) -> DataIndex:
    """The splits of the listed files without the `bad` ones ({path: reason})."""
    root, split_dirs, walk = listing.root, listing.split_dirs, listing.walk
    trees = {s: _without(tree, bad) for s, tree in listing.trees.items()}
    if split_dirs is not None:
        found = _index_pre_split(root, split_dirs, trees, cfg)
        _note_cross_split(found, cfg)
    else:
        found = _index_ratio_split(root, trees["all"], cfg)
    found.notes[:0] = listing.notes
    found.bad_files, found.ignored = sorted(bad.items()), sorted(walk.ignored)
    if bad:
        found.notes.insert(
            0, f"{len(bad)} bad files skipped, listed in bad_files.csv of the run folder"
        )
    if walk.ignored:
        names = ", ".join(sorted({Path(p).name for p in walk.ignored})[:5])
        found.notes.append(
            f"{len(walk.ignored)} files ignored as not images by their name ({names})"
        )
    found.notes.extend(walk.notes(root))
    return _warn_small_classes(found)


MAX_LISTED = 10  # bad files named in an error message; `trainer scan` lists them all


def find_bad_files(listing: Listing, cfg: DataConfig, workers: int | None = None) -> Verdicts:
    """{path: reason} of the files that do not decode (none without data.check_images); raises
    with data.on_bad_file=error."""
    if not cfg.check_images:
        return Verdicts({}, 0)
    root = listing.root
    try:
        bad = check_files(listing.paths(), cfg.max_image_pixels, workers, cache_file(root))
    except BrokenProcessPool:  # a decoding process was killed, e.g. out of memory
        raise DataError(
            f"a process checking the images in {root} died (out of memory on a huge image?): "
            "lower data.max_image_pixels, or turn the check off with data.check_images=false"
        ) from None
    left_out(bad, root, cfg)
    return bad


def left_out(bad: dict[str, str], root: Path, cfg: DataConfig) -> dict[str, str]:
    """The files a run leaves out of those that failed to decode (`bad`, by the check or by the
    pixel cache's build): all of them; an error with data.on_bad_file=error, or when the check
    was turned off (data.check_images=false) and the pixel cache met them anyway."""
    if bad and not cfg.check_images:
        raise _bad_files_error(bad, root, "data.check_images=false", "data.check_images=true")
    if bad and cfg.on_bad_file == "error":
        raise _bad_files_error(bad, root, "data.on_bad_file=error", "data.on_bad_file=skip")
    return bad


def _bad_files_error(bad: dict[str, str], root: Path, setting: str, way_out: str) -> DataError:
    listed = [f"  {os.path.relpath(p, root)}: {bad[p]}" for p in sorted(bad)[:MAX_LISTED]]
    more = [f"  ... and {len(bad) - MAX_LISTED} more"] if len(bad) > MAX_LISTED else []
    fix = (
        f"fix or remove them, or set {way_out} to train without them "
        f"(`trainer scan {root}` lists them all)"
    )
    head = f"{len(bad)} bad image files in {root} ({setting}):"
    return DataError("\n".join([head, *listed, *more, fix]))


def _without(tree: ClassFolders, bad: dict[str, str]) -> ClassFolders:
    """The same class folders without the bad files (a class may be left with none)."""
    if not bad:  # no copy of 10^6 paths when nothing is left out
        return tree
    return {name: [f for f in files if f not in bad] for name, files in tree.items()}


def _usable_classes(folders: ClassFolders, where: Path, notes: list[str]) -> list[str]:
    """The sorted names of the classes with images (their order is the label index); at least 2."""
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
    """A note for each class with fewer than FEW_IMAGES training images."""
    for name, n in zip(index.class_names, index.class_counts("train")):
        if n < FEW_IMAGES:
            index.notes.append(
                f"class {name!r} has only {n} training images: its numbers will be noisy; more "
                f"images help most (train.class_weights=balanced or data.sampler=balanced for imbalance)"
            )
    return index


def _index_pre_split(
    root: Path, split_dirs: dict[str, Path], trees: dict[str, ClassFolders], cfg: DataConfig
) -> DataIndex:
    """The classes are train/'s; val/ and test/ may lack some, never add one. Without val/,
    the val share of data.split is held out of train/."""
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
        train = index.splits["train"]
        groups = _duplicate_groups(cfg, root, train)
        parts = stratified_split(
            train, [1 - val_ratio, val_ratio, 0.0], cfg.split_seed, None, groups
        )
        index.splits["train"], index.splits["val"] = parts[0], parts[1]
        notes.append(f"no val/ folder: held out {val_ratio:.0%} of train/ as validation")
    return index


def _index_ratio_split(root: Path, folders: ClassFolders, cfg: DataConfig) -> DataIndex:
    """One folder of classes split by data.split ratios; an empty val or test split is left out."""
    notes: list[str] = []
    class_names = _usable_classes(folders, root, notes)
    items = [(f, i) for i, c in enumerate(class_names) for f in folders[c]]
    groups = _duplicate_groups(cfg, root, items)
    parts = stratified_split(items, cfg.split, cfg.split_seed, class_names, groups)
    index = DataIndex(root, class_names, "ratio-split", notes=notes)
    index.splits = {s: p for s, p in zip(SPLITS, parts) if p or s == "train"}
    return index


def _duplicate_groups(cfg: DataConfig, root: Path, items: list[tuple[str, int]]) -> list[list[str]]:
    """With data.group_duplicates, the last audit's copy groups among `items`; else none."""
    if not cfg.group_duplicates:
        return []
    found = read_groups(root) or read_groups(cfg.root)
    if found is None:
        raise DataError(
            "data.group_duplicates=true needs an audit of this folder: "
            f"run `trainer audit {cfg.root}` first"
        )
    return index_groups(found[0], [p for p, _ in items])


def _note_cross_split(index: DataIndex, cfg: DataConfig) -> None:
    """A pre-split folder's leakage, as the last audit of it counted: one note."""
    found = read_groups(index.root) or read_groups(cfg.root)
    if found is not None and found[1] == 0:
        index.notes.append(f"the audit of {cfg.root} found no duplicates across its splits")
    elif found is not None:
        index.notes.append(
            f"the audit of {cfg.root} found {found[1]} duplicate pairs (exact or near) across "
            "its splits "
            "(a val/test image with a copy in train flatters its numbers; "
            f"`trainer audit {cfg.root}` lists them)"
        )


def stratified_split(
    items: Sequence[tuple[str, int]],
    ratios: Sequence[float],
    seed: int,
    class_names: Sequence[str] | None = None,
    groups: Sequence[Sequence[str]] = (),
) -> list[list[tuple[str, int]]]:
    """Split (path, label) pairs into len(ratios) parts with the same class mix in each.

    Each class is shuffled by its own generator, seeded from `seed` and the class name, so adding
    a class or files to one class never moves the files of another. Every class keeps >= 1 image
    in the first (train) part. Each of `groups` (disjoint lists of item paths, `index_groups`)
    goes whole into one part, shuffled as one unit of the class most of its images have (ties:
    the first such label): its images keep their own labels, and a class all of whose images
    are in other classes' groups may have none in train. Without groups every unit is one
    image, and the split is the same as before groups existed.
    """
    # Each unit (a group, or an image in none) is told by its first item, so 10^6 ungrouped
    # images make no 10^6 one-item lists (their allocation and garbage collection cost seconds).
    firsts_of: dict[int, list[tuple[str, int]]] = {}  # label -> its units' first items
    group_of: dict[tuple[str, int], list[tuple[str, int]]] = {}  # first item -> its group
    grouped: set[str] = set()
    label_of = dict(items) if groups else {}  # ~40 MB at 10^6 items, so only when needed
    for group in groups:
        labels = [label_of[p] for p in group]
        owner = max(sorted(set(labels)), key=labels.count)
        unit = sorted((p, label_of[p]) for p in group)
        firsts_of.setdefault(owner, []).append(unit[0])
        group_of[unit[0]] = unit
        grouped.update(group)
    for item in items:
        if item[0] not in grouped:
            firsts_of.setdefault(item[1], []).append(item)
    parts: list[list[tuple[str, int]]] = [[] for _ in ratios]
    for label in sorted(firsts_of):
        firsts = sorted(firsts_of[label])  # the units in the order of their first paths
        name = class_names[label] if class_names else str(label)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
        order = rng.permutation(len(firsts))
        lengths = np.array([len(group_of[f]) if f in group_of else 1 for f in firsts], np.int64)
        lengths = lengths[order]
        n = int(lengths.sum())
        sizes = [round(n * r) for r in ratios[1:]]
        while n - sum(sizes) < 1 and any(sizes):  # keep one image for training
            sizes[max(range(len(sizes)), key=lambda i: sizes[i])] -= 1
        bounds = np.cumsum([n - sum(sizes), *sizes])
        # A unit goes to the part whose share holds its first image's position in the order.
        # As Python ints (tolist): indexing with numpy scalars costs seconds at 10^6 images.
        starts = np.cumsum(lengths) - lengths
        part_of = np.searchsorted(bounds, starts, side="right")
        for i, part in zip(order.tolist(), part_of.tolist()):
            first = firsts[i]
            if first in group_of:
                parts[part].extend(group_of[first])
            else:
                parts[part].append(first)
    return [sorted(p) for p in parts]


def labelled_items(
    folder: str | Path, class_names: list[str], split: str = "auto", layout: str = "auto"
) -> list[tuple[str, int]]:
    """(path, label) pairs of a class-per-folder tree, labelled by a trained model's class names.

    `folder` may be pre-split; `split` picks train/val/test ("auto": test, else val, else train).
    The same layout rules as `scan` (a pre-split folder needs no train/ here).
    """
    root, split_dirs = image_root_and_splits(folder, layout, [], need_train=False)
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
    folders = {c: fs for c, fs in class_folders(root, Walk()).items() if fs}
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
