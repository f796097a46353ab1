"""When a run saves a checkpoint, and what goes into one.

At the end of every epoch, every checkpoint.every_steps optimizer updates within an epoch, and at
a stop (a signal: trainer.train.preemption), unless checkpoint.enabled is false. A checkpoint
holds the weights, the EMA, the optimizer, the schedule, Progress and the Position training goes
on from, and every process's RNG streams and running sums (trainer.train.state); how it is
written, verified and pruned is trainer.train.checkpoint's.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator

from trainer.config import CheckpointConfig
from trainer.train import checkpoint
from trainer.train.ema import ModelEMA, NoEMA
from trainer.train.phase import Phase
from trainer.train.preemption import StopFlag
from trainer.train.rundir import Claim
from trainer.train.state import Position, Progress


@dataclass
class Checkpointer:
    """Saves when its policy says so; the loop asks after every update and every epoch."""

    cfg: CheckpointConfig
    accelerator: Accelerator
    folder: Path  # RUN_DIR/checkpoints
    ema: ModelEMA | NoEMA
    stop: StopFlag
    claim: Claim

    def due(self, step: int, stopping: bool) -> bool:
        """Whether to save after optimizer update `step` within an epoch."""
        every = self.cfg.every_steps
        return self.cfg.enabled and (stopping or bool(every and step % every == 0))

    def at_epoch_end(
        self, progress: Progress, phase: Phase, following: Position, is_best: bool
    ) -> Path | None:
        """The epoch's checkpoint (every epoch, when checkpoints are enabled)."""
        if not self.cfg.enabled:
            return None
        return self.save(progress, phase, following, is_best=is_best)

    def save(
        self,
        progress: Progress,
        phase: Phase,
        following: Position,
        sums: list[float] | None = None,
        is_best: bool = False,
    ) -> Path:
        """A checkpoint from which training continues at `following` (collective)."""
        a = self.accelerator
        state = {
            "step": progress.step,
            "epoch": progress.epoch,
            "phase": phase.cfg.name,
            "progress": dataclasses.asdict(progress),
            "next": dataclasses.asdict(following),
            "optimizer_phase": phase.index,
            "scheduler": {
                k: v for k, v in phase.scheduler.state_dict().items() if k != "lr_lambdas"
            },
            "ema_updates": self.ema.updates,
            "world_size": a.num_processes,
            "is_best": is_best,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        payload = checkpoint.Payload(
            trainer_state=state,
            model=a.unwrap_model(phase.model).state_dict(),
            optimizer=phase.optimizer.state_dict(),
            ema=self.ema.state_dict(),
            rank_state={"rng": checkpoint.rng_state(), "sums": sums},
        )
        with self.stop.saving_checkpoint():  # a second Ctrl-C now waits for the save
            saved = checkpoint.save(
                a, self.folder, progress.step, payload, self.cfg.keep_last, self.cfg.keep_best
            )
        self.claim.replaced()  # the run can continue on its own: an old run kept aside goes
        return saved
