"""Start or continue: what a run folder holds decides whether a run starts fresh or resumes.

checkpoint.resume=auto (the default) continues an unfinished run from its newest complete,
undamaged checkpoint, so rerunning the same command (by hand, or a requeued Slurm job) picks up
where it stopped. A finished run (summary.json) is never touched without overwrite=true, nor
one that holds what it trained (model/, a report, epochs) but no checkpoint to continue from. The
settings that shape the weights must match the run being continued; those that do not (workers,
logging, tracking, retention) may change. The data must not: the files of every split are
compared with the run's splits.csv. All of it runs after the inputs were checked and the folder
was locked (trainer.train.rundir), and nothing is written before the decision is made.
"""

from __future__ import annotations

import collections
import csv
import json
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainer import runtime
from trainer.config import ConfigError, RunConfig, dump_yaml, flat_dict, to_dict
from trainer.data import splits
from trainer.errors import writing
from trainer.train import checkpoint, rundir
from trainer.train.state import Position
from trainer.train.tracking import METRICS_FILE, read_events

# Keys that may differ between the interrupted run and its continuation.
FREE_KEYS = (
    "output_dir",
    "overwrite",
    "checkpoint.",
    "tracking.",
    "data.num_workers",
    "data.check_images",
    "data.on_bad_file",
    "train.log_every",
    "train.collective_timeout_s",
    "train.eval_batch_size",
)
# Keys added after runs were saved without them, with the value those runs had: a change of
# data.layout or data.group_duplicates (they shape the split) is refused, a config from before
# the key existed is not (those runs read their folder as data.layout=auto does).
ADDED_KEYS = {"data.layout": "auto", "data.group_duplicates": False}


@dataclass
class Resume:
    """A verified checkpoint, loaded for this process."""

    folder: Path
    state: dict[str, Any]  # trainer_state.json
    payload: checkpoint.Payload
    position: Position
    same_world: bool  # saved with as many processes as now: batches and RNG continue exactly


def prepare_run_dir(cfg: RunConfig, accelerator) -> tuple[Path, Resume | None]:
    """Decide fresh start or resume (on the main process, told to all), then set the folder up.

    Called with output_dir locked (rundir.Claim); a resume is then confirmed by `continue_run`.
    """
    run_dir = Path(cfg.output_dir).expanduser()

    def decide() -> str | None:
        chosen = _choose(cfg, run_dir, accelerator.print)
        # The run's own leftovers of a killed save (step-N.tmp, ~100 MB): gone before this run
        # writes anything, so a retry after a full disk has that space back.
        checkpoint.remove_unfinished(run_dir / "checkpoints")
        return chosen

    chosen = rundir.agree(accelerator, decide)
    if chosen is None:
        _fresh(cfg, run_dir, accelerator)
        return run_dir, None
    folder = Path(chosen)
    payload = checkpoint.load(folder, accelerator.process_index)
    state = payload.trainer_state
    same_world = state["world_size"] == accelerator.num_processes
    if same_world and "rng" not in payload.rank_state:  # never continue with RNG silently reset
        raise ConfigError(
            f"checkpoint {folder} has no RNG state for rank {accelerator.process_index}; "
            f"resume from another checkpoint (checkpoint.resume=PATH) or overwrite=true"
        )
    position = Position(**state["next"])
    if not same_world:
        accelerator.print(
            f"warning: {folder} was saved by {state['world_size']} processes, this run has "
            f"{accelerator.num_processes}: the interrupted epoch restarts from its first batch, "
            f"and the result will not match an uninterrupted run bit for bit"
        )
        position.batch = 0
    return run_dir, Resume(folder, state, payload, position, same_world)


def _choose(cfg: RunConfig, run_dir: Path, say) -> str | None:
    """The checkpoint folder to resume from, or None for a fresh start; raises ConfigError."""
    ck = cfg.checkpoint
    checkpoints = run_dir / "checkpoints"
    finished = (run_dir / "summary.json").exists()
    if cfg.overwrite:
        return None
    if finished:  # also for checkpoint.resume=PATH: continuing would write over it
        raise ConfigError(
            f"output_dir: {str(run_dir)!r} already holds a finished run; pick another "
            f"output_dir, or pass overwrite=true to replace it"
        )
    if ck.resume not in ("auto", "never"):
        folder = Path(ck.resume).expanduser()
        try:
            checkpoint.verify(folder)
        except checkpoint.CheckpointError as e:
            raise ConfigError(f"checkpoint.resume: {e}") from None
        _check_same_settings(cfg, folder)
        return str(folder)
    if not checkpoint.complete_checkpoints(checkpoints):
        _refuse_results_without_checkpoint(run_dir)
        return None  # nothing to continue: leftovers of a run that died before its first save
    if ck.resume == "never":
        raise ConfigError(
            f"output_dir: {str(run_dir)!r} holds checkpoints of an unfinished run; "
            f"checkpoint.resume=auto continues it, overwrite=true starts over"
        )
    found = checkpoint.newest_valid(checkpoints, warn=say)
    if found is None:
        raise ConfigError(
            f"output_dir: every checkpoint in {checkpoints} is damaged; pass overwrite=true to start over"
        )
    _check_same_settings(cfg, found[0])
    say(f"resuming from {found[0]} (step {found[1]['step']}, epoch {found[1]['epoch']})")
    return str(found[0])


def _results(run_dir: Path) -> list[str]:
    """What a run folder without checkpoints holds that training produced (a fresh start would
    replace it); nothing for a run that died in its first save."""
    epochs = [e for e in read_events(run_dir / METRICS_FILE) if e.get("event") == "epoch"]
    reports = [name for name in ("report.json", "report.md") if (run_dir / name).is_file()]
    if (run_dir / "checkpoints").is_dir() and len(epochs) <= 1 and not reports:
        # Its first save failed (a full disk) or was killed: the one epoch it trained (and
        # model/ of it) is what the retry redoes first. A deleted checkpoints/ is not this.
        return []
    found = []
    model = run_dir / "model"
    if model.is_dir() and any(model.iterdir()):
        found.append("a trained model/")
    found += reports
    if epochs:
        found.append(
            f"{METRICS_FILE} of {len(epochs)} trained epoch{'s' if len(epochs) > 1 else ''}"
        )
    return found


def _refuse_results_without_checkpoint(run_dir: Path) -> None:
    """A run whose checkpoints were deleted (to free disk space) or never written
    (checkpoint.enabled=false) still holds what it trained: never replaced without overwrite."""
    found = _results(run_dir)
    if found:
        raise ConfigError(
            f"output_dir {str(run_dir)!r} holds {', '.join(found)} but no checkpoint to continue "
            f"from; pass overwrite=true to replace it, or pick another output_dir"
        )


def _fresh(cfg: RunConfig, run_dir: Path, accelerator) -> None:
    """Move an earlier run aside (kept until this one's first checkpoint), then write the
    manifest, config.yaml and env.json (main process)."""

    def start() -> None:
        rundir.start_fresh(run_dir, say=accelerator.print)
        with writing(run_dir / "config.yaml"):
            (run_dir / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
        env = runtime.provenance(accelerator.num_processes, accelerator.device)
        with writing(run_dir / "env.json"):
            (run_dir / "env.json").write_text(json.dumps(env, indent=2), encoding="utf-8")

    rundir.agree(accelerator, start)


def _shaping(flat: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flat.items() if not k.startswith(FREE_KEYS)}


def _check_same_settings(cfg: RunConfig, folder: Path) -> None:
    """Refuse to continue a run with settings that would change its weights."""
    saved_file = folder.parent.parent / "config.yaml"
    if not saved_file.exists():
        return
    try:
        saved_tree = yaml.safe_load(saved_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{saved_file}: not readable YAML ({type(e).__name__}); restore it from the run's "
            f"checkpoint, or start over with overwrite=true"
        ) from None
    if not isinstance(saved_tree, dict):
        raise ConfigError(f"{saved_file}: not a config; start over with overwrite=true")
    saved = _shaping(ADDED_KEYS | flat_dict(saved_tree))
    now = _shaping(flat_dict(to_dict(cfg)))
    changed = [
        f"{k}: {saved.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(saved) | set(now))
        if saved.get(k) != now.get(k)
    ]
    if changed:
        raise ConfigError(
            f"output_dir holds an unfinished run with other settings ({'; '.join(changed[:5])}); "
            f"continue it with its own settings, or start over with overwrite=true or another output_dir"
        )


def continue_run(run_dir: Path, resume: Resume, index, accelerator) -> None:
    """Confirm a resume: the same data as when the run started, then record it (main process)."""

    def confirm() -> None:
        check_same_data(resume.folder.parent.parent / "splits.csv", index)
        rundir.adopt(run_dir)  # the manifest of a folder continued by this version
        _record_resume(run_dir, resume.folder, resume.state, accelerator.num_processes)

    rundir.agree(accelerator, confirm)


def _split_rows(path: Path) -> dict[tuple[str, str], str]:
    """{(split, path): label} of a splits.csv."""
    with open(path, newline="", encoding="utf-8") as f:
        return {(r["split"], r["path"]): r["label"] for r in csv.DictReader(f)}


def check_same_data(saved_csv: Path, index) -> None:
    """Refuse to continue a run whose images changed since it started (RUN_DIR/splits.csv)."""
    if not saved_csv.is_file():
        return  # a run that stopped before writing it has no batches to continue either
    with tempfile.TemporaryDirectory() as tmp:  # written as the run writes it: same paths
        splits.write_splits_csv(index, Path(tmp) / "splits.csv")
        now = _split_rows(Path(tmp) / "splits.csv")
    try:
        saved = _split_rows(saved_csv)
    except (KeyError, ValueError, csv.Error) as e:
        raise ConfigError(f"{saved_csv}: cannot be read ({e})") from None
    changes = _describe_changes(saved, now)
    if changes:
        raise ConfigError(
            f"data.root: the images changed since this run started ({changes}; compared with "
            f"{saved_csv}); restore them to continue the run, or start over with overwrite=true "
            f"or another output_dir"
        )


def _describe_changes(saved: dict, now: dict) -> str:
    """'3 files added to train, 1 removed from val; first ones: + train/x.png, ...' or ''."""
    added = sorted(k for k in now.keys() - saved.keys())
    removed = sorted(k for k in saved.keys() - now.keys())
    relabelled = sorted(k for k in now.keys() & saved.keys() if now[k] != saved[k])
    counts: list[str] = []
    for what, keys in (("added to", added), ("removed from", removed)):
        per_split = collections.Counter(split for split, _ in keys)
        counts += [
            f"{n} file{'s' if n > 1 else ''} {what} {split}" for split, n in per_split.items()
        ]
    if relabelled:
        counts.append(f"{len(relabelled)} with another label")
    if not counts:
        return ""
    first = [f"+ {p}" for _, p in added] + [f"- {p}" for _, p in removed]
    first += [f"{p}: {saved[(s, p)]} -> {now[(s, p)]}" for s, p in relabelled]
    return f"{', '.join(counts)}; first ones: {', '.join(first[:5])}"


def _record_resume(run_dir: Path, folder: Path, state: dict, world_size: int) -> None:
    """RUN_DIR/resumes.jsonl: one line per continuation, so the run folder tells its history."""
    line = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "checkpoint": str(folder),
        "step": state["step"],
        "epoch": state["epoch"],
        "world_size": world_size,
    }
    with open(run_dir / "resumes.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
