"""Which images of a folder are copies of each other, as the last `trainer audit` of it found?

The audit writes its duplicate groups (exact and near copies) to a small JSON file per image
root, next to the bad-file scan's verdicts; training reads them to keep each group inside one
split (`data.group_duplicates`) and to count the near-copies that cross the splits of a
pre-split folder. A missing, corrupt or other-version file reads as "no audit" (None).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from trainer.data.badfiles import cache_dir
from trainer.files import write_text_atomic

GROUPS_VERSION = 1


def groups_file(root: str | Path) -> Path:
    """CACHE_DIR/audit/<hash of the absolute root>.json: the groups of the images under `root`."""
    digest = hashlib.sha256(str(Path(root).resolve()).encode("utf-8")).hexdigest()[:24]
    return cache_dir() / "audit" / f"{digest}.json"


def write_groups(root: str | Path, groups: list[list[str]], cross_split: int) -> None:
    """Save `groups` (lists of >= 2 image paths that are copies of each other) and
    `cross_split` (how many duplicate pairs cross two splits) for `root`, atomically: a reader
    on another rank or node sees the earlier file or the new one, never half of one."""
    doc = {
        "version": GROUPS_VERSION,
        "root": str(Path(root).resolve()),
        "cross_split": int(cross_split),
        # Absolute, so a run started from another working directory finds the same images.
        "groups": [[os.path.abspath(p) for p in group] for group in groups if len(group) >= 2],
    }
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    write_text_atomic(groups_file(root), text)


def read_groups(root: str | Path) -> tuple[list[list[str]], int] | None:
    """(groups, cross_split) from the last audit of `root`; None when there is none, or its file
    is corrupt or was written by another version of this format."""
    try:
        doc = json.loads(groups_file(root).read_text(encoding="utf-8"))
        if doc.get("version") != GROUPS_VERSION:
            return None
        groups = doc["groups"]
        cross = doc["cross_split"]
        ok = isinstance(groups, list) and all(
            isinstance(g, list) and all(isinstance(p, str) for p in g) for g in groups
        )
        if not ok or not isinstance(cross, int) or isinstance(cross, bool):
            return None
        return groups, cross
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def index_groups(groups: list[list[str]], paths: list[str]) -> list[list[str]]:
    """The groups as the index spells its `paths` (it may hold relative ones), merged where two
    groups share an image, without images the index lacks (bad files, since removed), each >= 2."""
    spelled = {os.path.abspath(p): p for p in paths}
    parent: dict[str, str] = {}

    def find(p: str) -> str:
        while parent.setdefault(p, p) != p:
            parent[p] = parent[parent[p]]  # path halving keeps the chains short
            p = parent[p]
        return p

    for group in groups:
        members = [spelled[a] for a in map(os.path.abspath, group) if a in spelled]
        for p in members[1:]:
            parent[find(p)] = find(members[0])
    merged: dict[str, list[str]] = {}
    for p in parent:
        merged.setdefault(find(p), []).append(p)
    return sorted(sorted(set(g)) for g in merged.values() if len(set(g)) >= 2)
