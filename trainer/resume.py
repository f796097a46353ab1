"""Start or continue: what a run folder holds decides whether a run starts fresh or resumes.

checkpoint.resume=auto (the default) continues an unfinished run from its newest complete,
undamaged checkpoint, so rerunning the same command (by hand, or a requeued Slurm job) picks up
where it stopped. A finished run (summary.json) is never touched without overwrite=true. The
settings that shape the weights must match the run being continued; those that do not (workers,
logging, tracking, retention) may change.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from accelerate.utils import broadcast_object_list

from trainer import checkpoint, runtime
from trainer.config import ConfigError, RunConfig, dump_yaml, flat_dict, to_dict

RUN_FILES = (
    "report.json",
    "report.md",
    "plots",
    "config.yaml",
    "env.json",
    "metrics.jsonl",
    "summary.json",
    "splits.csv",
    "bad_files.csv",
    "resumes.jsonl",
    "wandb_run.json",
    "wandb",
    "checkpoints",
    "model",
)

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


@dataclass
class Position:
    """Where training goes on: the phase, the epoch within it, the batch within that epoch."""

    phase_index: int = 0
    phase_epoch: int = 0
    batch: int = 0


@dataclass
class Resume:
    """A verified checkpoint, loaded for this process."""

    folder: Path
    state: dict[str, Any]  # trainer_state.json
    payload: checkpoint.Payload
    position: Position
    same_world: bool  # saved with as many processes as now: batches and RNG continue exactly


def prepare_run_dir(cfg: RunConfig, accelerator) -> tuple[Path, Resume | None]:
    """Decide fresh start or resume (on the main process, told to all), then set the folder up."""
    run_dir = Path(cfg.output_dir)
    decision: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            decision[0] = ("ok", _choose(cfg, run_dir, accelerator.print))
        except ConfigError as e:
            decision[0] = ("error", str(e))
    broadcast_object_list(decision, from_process=0)
    kind, chosen = decision[0]
    if kind == "error":
        raise ConfigError(chosen)
    if chosen is None:
        _fresh(cfg, run_dir, accelerator)
        return run_dir, None
    folder = Path(chosen)
    payload = checkpoint.load(folder, accelerator.process_index)
    state = payload.trainer_state
    if accelerator.is_main_process:
        _check_same_settings(cfg, folder)
        _record_resume(run_dir, folder, state, accelerator.num_processes)
    accelerator.wait_for_everyone()
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
    if ck.resume not in ("auto", "never"):
        folder = Path(ck.resume).expanduser()
        try:
            checkpoint.verify(folder)
        except checkpoint.CheckpointError as e:
            raise ConfigError(f"checkpoint.resume: {e}") from None
        return str(folder)
    if finished:
        raise ConfigError(
            f"output_dir: {str(run_dir)!r} already holds a finished run; pick another "
            f"output_dir, or pass overwrite=true to replace it"
        )
    if not checkpoint.complete_checkpoints(checkpoints):
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
    say(f"resuming from {found[0]} (step {found[1]['step']}, epoch {found[1]['epoch']})")
    return str(found[0])


def _fresh(cfg: RunConfig, run_dir: Path, accelerator) -> None:
    """Clear what an earlier run left, then write config.yaml and env.json (main process)."""
    accelerator.wait_for_everyone()  # every rank has decided before the main one deletes
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
        env = runtime.provenance(accelerator.num_processes, accelerator.device)
        (run_dir / "env.json").write_text(json.dumps(env, indent=2), encoding="utf-8")
    accelerator.wait_for_everyone()


def _shaping(flat: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flat.items() if not k.startswith(FREE_KEYS)}


def _check_same_settings(cfg: RunConfig, folder: Path) -> None:
    """Refuse to continue a run with settings that would change its weights."""
    saved_file = folder.parent.parent / "config.yaml"
    if not saved_file.exists():
        return
    saved = _shaping(flat_dict(yaml.safe_load(saved_file.read_text(encoding="utf-8"))))
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


def _record_resume(run_dir: Path, folder: Path, state: dict, world_size: int) -> None:
    """RUN_DIR/resumes.jsonl: one line per continuation, so the run folder tells its history."""
    run_dir.mkdir(parents=True, exist_ok=True)
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
