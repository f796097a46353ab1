"""Where numbers go: RUN_DIR/metrics.jsonl always, W&B (through accelerate's trackers) when enabled.

Only the main process writes. Nothing imports wandb unless tracking.wandb.mode is not disabled.
A resumed run continues both: metrics.jsonl is cut back to the checkpoint's step, and W&B gets
the same run id again (RUN_DIR/wandb_run.json) so the run's charts continue in one run.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import time
from pathlib import Path
from typing import Any

from trainer import secrets
from trainer.config import RunConfig, TrackingConfig, WandbConfig, flat_dict, to_dict

METRICS_FILE = "metrics.jsonl"
WANDB_RUN_FILE = "wandb_run.json"


def accelerate_log_with(tracking: TrackingConfig) -> list[str]:
    """The `log_with` argument of the Accelerator."""
    return ["wandb"] if tracking.wandb.mode != "disabled" else []


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN/inf are not JSON
    return value


def _write_atomic(path: Path, text: str) -> None:
    """Write aside, then rename: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_events(path: Path) -> list[dict]:
    """The events of a metrics.jsonl; a line that does not parse (the last line of a process
    killed mid-write) is left out."""
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def truncate_events(path: Path, step: int) -> tuple[list[dict], int]:
    """Keep only the events of metrics.jsonl at or before `step` (rewritten atomically).

    A resumed run replays everything after its checkpoint's step; without this those events
    would appear twice. Returns (kept events, highest step that was in the file).
    """
    events = read_events(path)
    kept = [e for e in events if e.get("step", 0) <= step]
    _write_atomic(path, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in kept))
    return kept, max((e.get("step", 0) for e in events), default=-1)


def wandb_run_id(run_dir: Path, resume: bool) -> tuple[str, bool]:
    """(W&B run id, whether it continues an earlier run): the stored id when resuming, else a
    new one, stored in RUN_DIR/wandb_run.json for the next resume."""
    path = run_dir / WANDB_RUN_FILE
    if resume and path.is_file():
        try:
            return str(json.loads(path.read_text(encoding="utf-8"))["id"]), True
        except (ValueError, KeyError, TypeError):
            pass  # unreadable: a new W&B run beats no run
    from wandb.sdk.lib.runid import generate_id

    run_id = generate_id()
    _write_atomic(path, json.dumps({"id": run_id}) + "\n")
    return run_id, False


class Tracker:
    """`log(event, step=, epoch=, phase=, **values)` appends one JSON object to metrics.jsonl.

    `resume_step`: the step of the checkpoint a resumed run starts from; None for a fresh run.
    """

    def __init__(self, accelerator, run_dir: Path, cfg: RunConfig, resume_step: int | None = None):
        secrets.register(cfg.tracking.wandb.api_key)
        secrets.scrub_argv()  # before W&B records the command line in wandb-metadata.json
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.run_dir = run_dir
        self.wandb = cfg.tracking.wandb.mode != "disabled"
        self.log_every = cfg.train.log_every
        self.events: list[dict] = []  # what was logged, for the plots at the end (main process)
        # W&B refuses steps below ones it has; a resumed run's replayed steps up to here are in
        # W&B already (resume is exact: the same numbers), so they go to metrics.jsonl only.
        self._wandb_has_step = -1
        self._wandb_id: str | None = None
        self._file = None
        if self.main:
            path = run_dir / METRICS_FILE
            if resume_step is not None:
                self.events, self._wandb_has_step = truncate_events(path, resume_step)
            self._file = open(path, "a", encoding="utf-8")
        if self.wandb:
            self._init_wandb(cfg, resume_step)

    def _init_wandb(self, cfg: RunConfig, resume_step: int | None) -> None:
        w: WandbConfig = cfg.tracking.wandb
        init: dict[str, Any] = {"mode": w.mode, "dir": str(self.run_dir)}
        init["name"] = w.name or self.run_dir.name
        if w.entity:
            init["entity"] = w.entity
        if self.main:  # only the main process starts a W&B run
            if w.api_key:
                # wandb reads it from this process's environment; it never enters a config.
                os.environ["WANDB_API_KEY"] = w.api_key
            self._wandb_id, resumed = wandb_run_id(self.run_dir, resume_step is not None)
            init["id"] = self._wandb_id
            if resumed:
                init["resume"] = "allow"
        config = secrets.redact(flat_dict(to_dict(cfg)))
        self.accelerator.init_trackers(w.project, config=config, init_kwargs={"wandb": init})
        if self.main:
            run = self.accelerator.get_tracker("wandb", unwrap=True)
            # Online, a resumed run knows its last step from the server (offline it starts at 0).
            self._wandb_has_step = max(self._wandb_has_step, getattr(run, "step", 0) - 1)

    def log(self, event: str, *, step: int, epoch: int, phase: str, **values: Any) -> None:
        if not self.main:
            return
        record = {
            "event": event,
            "time": round(time.time(), 3),
            "step": step,
            "epoch": epoch,
            "phase": phase,
        }
        record.update({k: _json_safe(v) for k, v in values.items()})
        self.events.append(record)
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        if self.wandb and step > self._wandb_has_step:
            scalars = {
                f"{event}/{k}": v
                for k, v in values.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            self.accelerator.log({**scalars, "epoch": epoch}, step=step)

    def log_images(self, images: dict[str, Path], step: int) -> None:
        """PNG files to W&B as images (main process; nothing when W&B is off)."""
        if not (self.wandb and self.main) or step <= self._wandb_has_step:
            return
        from PIL import Image

        tracker = self.accelerator.get_tracker("wandb")
        tracker.log_images(
            {f"plots/{name}": [Image.open(path)] for name, path in images.items()}, step=step
        )

    def finish(self) -> str | None:
        """Close files; returns the `wandb sync` command for an offline run, if any."""
        if self._file:
            self._file.close()
            self._file = None
        if not (self.wandb and self.main):
            return None
        tracker = self.accelerator.get_tracker("wandb", unwrap=True)
        run_dir = getattr(tracker, "dir", None)
        offline = getattr(getattr(tracker, "settings", None), "mode", "") == "offline"
        if not (offline and run_dir):
            return None
        # A resumed run has one offline folder per start; wandb sync uploads them in order.
        this = Path(run_dir).parent
        folders = sorted(this.parent.glob(f"offline-run-*-{self._wandb_id}")) or [this]
        return "wandb sync " + " ".join(shlex.quote(str(f)) for f in folders)
