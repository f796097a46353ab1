"""Resumable checkpoints: accelerate `save_state` (safetensors) written aside, renamed, marked complete.

RUN_DIR/checkpoints/step-00001234/ holds the model, optimizer, RNG and sampler states, plus
trainer_state.json (phase, epoch, step, best metric) and a COMPLETE marker written last. A folder
without the marker is a save that did not finish and is never used. Old checkpoints are pruned
only after the new one is complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

COMPLETE = "COMPLETE"


def step_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step-{step:08d}"


def complete_checkpoints(checkpoints: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not checkpoints.is_dir():
        return []
    return sorted(p for p in checkpoints.glob("step-*") if p.is_dir() and (p / COMPLETE).is_file())


def save_checkpoint(
    accelerator, checkpoints: Path, step: int, trainer_state: dict[str, Any], keep_last: int
) -> Path:
    """Collective: every process calls it (each saves its own RNG state)."""
    final = step_dir(checkpoints, step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during an earlier save
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(
            json.dumps(trainer_state, indent=2), encoding="utf-8"
        )
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        (final / COMPLETE).write_text("ok\n")
        for old in complete_checkpoints(checkpoints)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
