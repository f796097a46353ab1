"""Where numbers go: RUN_DIR/metrics.jsonl always, W&B (through accelerate's trackers) when enabled.

Only the main process writes. Nothing imports wandb unless tracking.wandb.mode is not disabled.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from trainer.config import RunConfig, TrackingConfig, flat_dict, to_dict


def accelerate_log_with(cfg: TrackingConfig) -> list[str]:
    """The `log_with` argument of the Accelerator."""
    return ["wandb"] if cfg.wandb.mode != "disabled" else []


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN/inf are not JSON
    return value


class Tracker:
    """`log(event, step=, epoch=, phase=, **values)` appends one JSON object to metrics.jsonl."""

    def __init__(self, accelerator, run_dir: Path, cfg: RunConfig):
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.run_dir = run_dir
        self.wandb = cfg.tracking.wandb.mode != "disabled"
        self.log_every = cfg.train.log_every
        self.events: list[dict] = []  # what was logged, for the plots at the end (main process)
        self._file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8") if self.main else None
        if self.wandb:
            w = cfg.tracking.wandb
            init = {"mode": w.mode, "dir": str(run_dir), "name": w.name or run_dir.name}
            if w.entity:
                init["entity"] = w.entity
            accelerator.init_trackers(
                w.project, config=flat_dict(to_dict(cfg)), init_kwargs={"wandb": init}
            )

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
        if self.wandb:
            scalars = {
                f"{event}/{k}": v
                for k, v in values.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            self.accelerator.log({**scalars, "epoch": epoch}, step=step)

    def log_images(self, images: dict[str, Path], step: int) -> None:
        """PNG files to W&B as images (main process; nothing when W&B is off)."""
        if not (self.wandb and self.main):
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
        return f"wandb sync {Path(run_dir).parent}" if offline and run_dir else None
