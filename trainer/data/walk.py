"""Which image files lie below a folder: each real file once, symlinks followed once.

Images are told by their extension. Folders are walked with `os.scandir` (fast on large trees),
depth first in name order, so the order never depends on the disk. Symlinks are followed once per
real folder and each real image is listed once (by device and inode); what was not followed or
counted twice is kept in a `Walk` and told to the user as notes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.progress import LogLines, bar

if TYPE_CHECKING:
    from tqdm.auto import tqdm

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)

Key = tuple[int, int]  # (st_dev, st_ino): a real file or folder, whatever path leads to it
QUIET_SECONDS = 2.0  # a listing that ends sooner shows no progress: small folders print nothing


def is_image_file(name: str) -> bool:
    """By extension; hidden files (.DS_Store, ._foo.jpg from macOS) and Thumbs.db are not images."""
    # Slicing at the last dot is Path(name).suffix for a name that does not start with a dot
    # (a name without one yields its last character, never an extension), at a tenth of its cost.
    return not name.startswith(".") and name[name.rfind(".") :].lower() in IMAGE_EXTENSIONS


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
        """What the user should hear about the links met, paths relative to `root`."""

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
        return self._seen(self.folders, key, top, self.not_followed)

    def seen_file(self, path: str, key: Key) -> bool:
        """True if the image at `path` was listed already (through another path)."""
        if key not in self.files:  # the usual case in one call: this runs once per file
            self.files[key] = (self.owner, path)
            return False
        return self._seen(self.files, key, path, self.twice)

    def _seen(
        self, first: dict[Key, tuple[str, str]], key: Key, path: str, again: list[str]
    ) -> bool:
        """Record the first path to `key`; a later one is kept in `again` when it is reached
        from the same class, in `two_labels` when from another."""
        if key not in first:
            first[key] = (self.owner, path)
            return False
        owner, kept = first[key]
        if owner != self.owner:
            self.two_labels.append((kept, path))
        else:
            again.append(path)
        return True


class Progress:
    """Files listed so far, shown as `trainer.progress.bar` only once listing has taken
    QUIET_SECONDS; a context manager."""

    def __init__(self, desc: str):
        self.desc, self.n, self.start = desc, 0, time.monotonic()
        self.bar: tqdm | LogLines | None = None  # none until QUIET_SECONDS have passed

    def update(self, n: int) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.monotonic() - self.start >= QUIET_SECONDS:
            self.bar = bar(None, self.desc, initial=self.n, unit="files")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _image_files(folder: Path, walk: Walk) -> Iterator[list[str]]:
    """The image files below `folder` that `walk` has not listed yet, one list per folder, depth
    first in name order (the same on every rank). Other files (.DS_Store, notes.txt) go to
    `walk.ignored`."""
    stack = [str(folder)]
    while stack:
        top = stack.pop()
        st = os.stat(top)
        if walk.seen_folder(top, (st.st_dev, st.st_ino)):
            continue
        with os.scandir(top) as it:
            entries = sorted(it, key=attrgetter("name"))
        subfolders, images = [], []
        # The hot loop at 10^6 files: DirEntry answers is_dir/is_file (links followed) from the
        # folder listing itself (no stat call per file, no Path object); only links cost a call.
        for entry in entries:
            if entry.is_dir():
                if not entry.name.startswith("."):
                    subfolders.append(entry.path)
            elif not entry.is_file():
                if entry.is_symlink():
                    walk.broken.append(entry.path)
            elif not is_image_file(entry.name):
                walk.ignored.append(entry.path)
            elif entry.is_symlink():
                target = entry.stat()
                if not walk.seen_file(entry.path, (target.st_dev, target.st_ino)):
                    images.append(entry.path)
            elif not walk.seen_file(entry.path, (st.st_dev, entry.inode())):
                images.append(entry.path)
        yield images
        stack.extend(reversed(subfolders))


def list_images(
    folder: Path, walk: Walk | None = None, progress: Progress | None = None
) -> list[str]:
    """All image files below `folder` (recursively, links followed once), sorted so the order
    never depends on the disk. Other files (.DS_Store, notes.txt) go to `walk.ignored`; each
    folder's images are counted on `progress`."""
    images: list[str] = []
    for found in _image_files(folder, walk if walk is not None else Walk()):
        images += found
        if progress is not None:
            progress.update(len(found))
    images.sort()
    return images


def holds_images(folder: Path) -> bool:
    """Any image file below `folder`; stops at the first folder that has one."""
    return any(_image_files(folder, Walk()))


def subfolders(folder: Path) -> list[Path]:
    """The sub-folders of `folder` (links followed, hidden ones left out), sorted by name."""
    with os.scandir(folder) as it:
        names = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    return [folder / name for name in names]


def loose_images(folder: Path) -> list[str]:
    """Image files directly in `folder` (not in a sub-folder)."""
    with os.scandir(folder) as it:
        return sorted(e.path for e in it if is_image_file(e.name) and e.is_file())
