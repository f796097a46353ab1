"""The run folder is the program's only by record: a manifest, a lock, an old run kept aside.

RUN_DIR/trainer-run.json   the manifest: the top-level entries this program writes in the folder,
                           recorded before it writes them (so a crash never leaves an unrecorded
                           one). Only recorded entries are ever moved or deleted, never by name.
RUN_DIR/trainer.lock       the run using the folder: a second run is refused (trainer.train.lock).
RUN_DIR/trainer-previous-run/
                           overwrite=true moves the old run's recorded entries here and deletes
                           them only once the new run has written its first checkpoint (or ended,
                           without checkpoints). If the new run fails before that, the old run is
                           put back; a run killed before that is rolled back by the next start.

An existing output_dir that is neither empty nor a run folder is refused. A run folder of an
older version (no manifest) is recognised by a readable config.yaml (data, model, train) and
env.json; its entries named like run files, of the right kind (file or folder), count as recorded.
Everything here runs on the main process; `agree` gives every rank the same verdict.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.config import ConfigError
from trainer.train.lock import LOCK, release_lock, take_lock

MANIFEST = "trainer-run.json"
ASIDE = "trainer-previous-run"
DROP = ASIDE + ".delete"  # the aside copy being deleted: the replacement succeeded

RUN_DIRS = ("plots", "wandb", "checkpoints", "model")
RUN_FILES = (
    "report.json",
    "report.md",
    "predictions.csv",
    "config.yaml",
    "env.json",
    "metrics.jsonl",
    "summary.json",
    "splits.csv",
    "bad_files.csv",
    "resumes.jsonl",
    "wandb_run.json",
    *RUN_DIRS,
)
# Ours whatever the manifest says: they never make a folder "not empty" or "not a run".
OWN = (MANIFEST, MANIFEST + ".tmp", LOCK, ASIDE, DROP)


def agree(accelerator, work: Callable[[], Any]) -> Any:
    """`work()` on the main process only; its result, or its user error, on every rank.

    An error on the main process is raised there as it is; the others raise a ConfigError with
    its text (a user's mistake: a ConfigError or OSError, so every rank exits 2) or a
    RuntimeError naming it (a bug), instead of waiting for the main process forever.
    """
    from accelerate.utils import broadcast_object_list

    box: list[Any] = [None]
    error: Exception | None = None
    if accelerator.is_main_process:
        try:
            box[0] = ("ok", work())
        except Exception as e:  # noqa: BLE001 - re-raised below, after the others were told
            user = isinstance(e, (ConfigError, OSError))
            error, box[0] = e, ("error" if user else "bug", str(e) or type(e).__name__)
    if accelerator.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    kind, value = box[0]
    if error is not None:
        raise error
    if kind == "error":
        raise ConfigError(value)
    if kind == "bug":
        raise RuntimeError(f"the main process failed setting up output_dir: {value}")
    return value


# --------------------------------------------------------------------------- where and what


@dataclass
class Contents:
    """What an output_dir holds: kind is new (missing or empty), run, old-run or foreign."""

    kind: str
    recorded: list[str] = field(default_factory=list)  # entries that belong to the run
    strangers: list[str] = field(default_factory=list)  # run-file names the run did not write


def _listing(run_dir: Path) -> list[str]:
    return sorted(
        p.name for p in run_dir.iterdir() if p.name not in OWN and not p.name.startswith(LOCK)
    )


def _plain_name(name: object) -> bool:
    """A name of an entry directly in the folder (never '..', a path, or one of OWN)."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..", *OWN)
        and not any(c in name for c in ("/", "\\", "\0"))
    )


def read_manifest(run_dir: Path) -> dict | None:
    """The manifest, or None when there is none; raises ConfigError for a damaged one."""
    path = run_dir / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        entries = manifest["entries"]
        if not isinstance(entries, list) or not all(_plain_name(e) for e in entries):
            raise ValueError("entries are not plain names")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"output_dir: {str(path)!r} cannot be read ({e}); this program writes it: restore "
            f"it or pick another output_dir"
        ) from None
    return manifest


def _looks_like_old_run(run_dir: Path) -> bool:
    """config.yaml with data/model/train sections and env.json: a run folder of an older version."""
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        env = json.loads((run_dir / "env.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return (
        isinstance(cfg, dict) and {"data", "model", "train"} <= cfg.keys() and isinstance(env, dict)
    )


def _of_right_kind(path: Path) -> bool:
    if path.is_symlink():
        return False  # this program never writes links
    return path.is_dir() if path.name in RUN_DIRS else path.is_file()


def inspect(run_dir: Path) -> Contents:
    """Classify `run_dir` (reads only)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output_dir: {str(run_dir)!r} is a file; output_dir must be a folder")
    if not run_dir.exists():
        return Contents("new")
    present = _listing(run_dir)
    manifest = read_manifest(run_dir)
    if manifest is not None:
        kind, recorded = "run", list(manifest["entries"])
    elif not present:
        return Contents("new")
    elif _looks_like_old_run(run_dir):
        kind = "old-run"
        recorded = [n for n in RUN_FILES if _of_right_kind(run_dir / n)]
    else:
        return Contents("foreign")
    strangers = [n for n in present if n in RUN_FILES and n not in recorded]
    return Contents(kind, recorded, strangers)


def refuse_unless_run(run_dir: Path, contents: Contents) -> None:
    """ConfigError for a folder that is not ours to write into."""
    if contents.kind == "foreign":
        shown = ", ".join(repr(n) for n in _listing(run_dir)[:5])
        raise ConfigError(
            f"output_dir: {str(run_dir)!r} already exists and is not a run folder (it holds "
            f"{shown}); nothing was changed: pick a new or empty folder for output_dir"
        )
    if contents.strangers:
        shown = ", ".join(repr(n) for n in contents.strangers[:5])
        raise ConfigError(
            f"output_dir: {str(run_dir)!r} holds {shown}, which this program did not write and "
            f"would overwrite; nothing was changed: move them away or pick another output_dir"
        )


# --------------------------------------------------------------------------- the manifest


def _write_json_atomic(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_manifest(run_dir: Path, entries: list[str]) -> None:
    """Record `entries` (plus every run file this version writes) as the program's."""
    names = sorted(set(entries) | set(RUN_FILES))
    _write_json_atomic(
        run_dir / MANIFEST,
        {
            "written_by": "trainer",
            "about": "the entries of this folder that trainer wrote; only these are ever "
            "moved or deleted by it",
            "run_id": uuid.uuid4().hex,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "entries": names,
        },
    )


def adopt(run_dir: Path) -> None:
    """Make sure the manifest records every run file (a run continued by this version, or an
    older version's folder); refuses names already there that it would not own."""
    contents = inspect(run_dir)
    refuse_unless_run(run_dir, contents)
    manifest = read_manifest(run_dir) if run_dir.exists() else None
    if manifest is None or not set(RUN_FILES) <= set(manifest["entries"]):
        run_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(run_dir, contents.recorded)


# --------------------------------------------------------------------------- replacing a run


def start_fresh(run_dir: Path, say: Callable[[str], None]) -> None:
    """Set `run_dir` up for a new run: an earlier run's recorded entries go aside (kept until
    `finish_replacement`), then a new manifest. Runs under the lock, leftovers resolved."""
    contents = inspect(run_dir)
    refuse_unless_run(run_dir, contents)
    run_dir.mkdir(parents=True, exist_ok=True)
    if contents.kind == "new":
        write_manifest(run_dir, [])
        return
    if contents.kind == "old-run":
        write_manifest(run_dir, contents.recorded)  # adopt it, so it moves like any run
    aside = run_dir / ASIDE
    aside.mkdir()
    moved = []
    for name in contents.recorded:
        if os.path.lexists(run_dir / name):
            os.rename(run_dir / name, aside / name)
            moved.append(name)
    os.rename(run_dir / MANIFEST, aside / MANIFEST)  # last: marks the move as complete
    write_manifest(run_dir, [])
    if moved:
        say(
            f"note: the earlier run in {run_dir} ({', '.join(moved[:4])}"
            f"{', ...' if len(moved) > 4 else ''}) is kept in {aside} until this run's first "
            f"checkpoint; if this run fails before, it is put back"
        )


def finish_replacement(run_dir: Path) -> None:
    """The new run stands on its own (first checkpoint, or its end): delete the old one."""
    aside, drop = run_dir / ASIDE, run_dir / DROP
    if aside.exists():
        os.rename(aside, drop)  # one step: a crash from here on never restores it
    if drop.exists():
        shutil.rmtree(drop)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def undo_replacement(run_dir: Path) -> tuple[bool, str | None]:
    """Put a run moved aside back, removing what the replacing run wrote: (all back, note)."""
    aside = run_dir / ASIDE
    if not aside.is_dir():
        return True, None
    if (aside / MANIFEST).exists() and (run_dir / MANIFEST).exists():
        # The old manifest is aside, so the one in the folder is the new run's.
        new = read_manifest(run_dir) or {"entries": []}
        for name in new["entries"]:
            if os.path.lexists(run_dir / name):
                _remove(run_dir / name)
        (run_dir / MANIFEST).unlink()
    stuck = []
    for entry in sorted(aside.iterdir()):
        target = run_dir / entry.name
        if os.path.lexists(target):
            stuck.append(entry.name)
        else:
            os.rename(entry, target)
    if stuck:
        return False, (
            f"the earlier run's {', '.join(stuck)} could not be put back (the names are taken); "
            f"they are in {aside}"
        )
    aside.rmdir()
    why = "the run replacing it ended before its first checkpoint"
    return True, f"the earlier run in {run_dir} is back in place ({why})"


def resolve_leftovers(run_dir: Path, say: Callable[[str], None]) -> None:
    """A replacement that a killed run left half done: finish it or undo it (under the lock)."""
    if (run_dir / DROP).exists():
        shutil.rmtree(run_dir / DROP)
    done, note = undo_replacement(run_dir)
    if not done:
        raise ConfigError(f"output_dir: {note}; move them back by hand or pick another output_dir")
    if note:
        say(f"note: {note}")


# --------------------------------------------------------------------------- one run's claim


class Claim:
    """A run's hold on output_dir: checked and locked once the inputs are valid (`acquire`),
    an old run kept aside until `replaced`, released (or the old run put back) by `release`."""

    def __init__(self, output_dir: str, accelerator):
        self.run_dir = Path(output_dir).expanduser()
        self.accelerator = accelerator
        self.lock: dict[str, Any] | None = None  # ours, on the main process, while held
        self.created = False  # the folder did not exist: removed again if left empty

    def acquire(self) -> None:
        """Refuse a folder that is not a run's or is in use, lock it, resolve a half-done
        replacement; on the main process, with the verdict on every rank."""
        agree(self.accelerator, self._acquire)

    def _acquire(self) -> None:
        say = self.accelerator.print
        refuse_unless_run(self.run_dir, inspect(self.run_dir))  # before writing anything
        self.created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.lock = take_lock(self.run_dir, say)
        except BaseException:
            if self.created:
                with contextlib.suppress(OSError):
                    self.run_dir.rmdir()
            raise
        try:
            resolve_leftovers(self.run_dir, say)
            refuse_unless_run(self.run_dir, inspect(self.run_dir))  # as it is now, locked
        except BaseException:
            self.release(succeeded=False)
            raise

    def replaced(self) -> None:
        """The run has a checkpoint of its own: the old run kept aside is deleted."""
        if self.lock is not None:
            finish_replacement(self.run_dir)

    def release(self, succeeded: bool) -> None:
        """At the run's end (main process): keep the new run and drop the old one, or, when it
        failed before its first checkpoint, put the old run back; then unlock."""
        if self.lock is None:
            return
        aside = self.run_dir / ASIDE
        try:  # never hides the run's own error: a failure here is told, not raised
            if succeeded:
                finish_replacement(self.run_dir)
            else:
                note = undo_replacement(self.run_dir)[1]
                if note:
                    self.accelerator.print(f"note: {note}")
        except (OSError, ConfigError) as e:
            self.accelerator.print(f"warning: {e}; the earlier run's files are in {aside}")
        finally:
            release_lock(self.run_dir, self.lock)
            self.lock = None
            if self.created:
                with contextlib.suppress(OSError):
                    self.run_dir.rmdir()  # only if empty: nothing was written after all
