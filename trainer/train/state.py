"""Where a run stands: what a checkpoint saves and a resumed run starts from.

Progress (counters and the best epoch so far) and the Position of the next batch are saved in
trainer_state.json ("progress", "next"); each process's RNG streams and running sums of the
interrupted epoch in its rank file; the optimizer and schedule of the phase in progress beside
them. A resumed run takes each of these back exactly once: the phase it starts in takes the
optimizer and schedule, the first epoch it trains takes the RNG streams and sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from trainer.train.resume import Resume


@dataclass
class Progress:
    """Counters and best-so-far that carry across phases (and into checkpoints)."""

    metric: str = "val_accuracy"  # train.select_metric
    step: int = 0  # optimizer updates so far, all phases
    epoch: int = 0  # epochs completed, all phases
    best_score: float | None = None  # select_metric of the best epoch
    best_val_accuracy: float | None = None
    best_val_loss: float | None = None
    best_epoch: int | None = None
    stale_epochs: int = 0  # epochs without improvement in the current phase (early stopping)

    def score(self, val: dict[str, Any]) -> tuple[float, float]:
        """Larger is better: the select metric (negated for loss), then the lower loss."""
        value = val[self.metric.removeprefix("val_")]
        return (-value if self.metric == "val_loss" else value, -val["loss"])

    def improves(self, val: dict[str, Any]) -> bool:
        return self.best_score is None or self.score(val) > (self.best_score, -self.best_val_loss)

    def record_best(self, val: dict[str, Any]) -> None:
        self.best_score = self.score(val)[0]
        self.best_val_accuracy, self.best_val_loss, self.best_epoch = (
            val["accuracy"],
            val["loss"],
            self.epoch,
        )


@dataclass
class Position:
    """Where training goes on: the phase, the epoch within it, the batch within that epoch."""

    phase_index: int = 0
    phase_epoch: int = 0
    batch: int = 0


class RunningSums:
    """An epoch's training loss, correct and seen counts, summed on the device (no CPU-GPU sync
    per step); saved with a mid-epoch checkpoint so a resumed epoch reports the same means."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device, dtype=torch.float32)  # MPS has no float64
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen = torch.zeros((), device=device, dtype=torch.long)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss += loss.detach().float() * labels.numel()
        self.correct += (logits.detach().argmax(dim=1) == labels).sum()
        self.seen += labels.numel()

    def restore(self, saved: list[float]) -> None:
        self.loss += saved[0]
        self.correct += int(saved[1])
        self.seen += int(saved[2])

    def values(self) -> list[float]:
        """For a checkpoint: a CPU-GPU sync point, at saves only."""
        return [self.loss.item(), self.correct.item(), self.seen.item()]

    def totals(self, accelerator) -> dict:
        """Mean loss and accuracy over every process's samples (collective)."""
        stacked = torch.stack([self.loss, self.correct.float(), self.seen.float()])
        loss, correct, seen = accelerator.reduce(stacked, reduction="sum").tolist()
        return {
            "loss": loss / max(seen, 1),
            "accuracy": correct / max(seen, 1),
            "samples": int(seen),
        }


@dataclass
class PhaseState:
    """The optimizer and schedule a checkpoint holds, for the phase that was in progress."""

    phase_index: int
    optimizer: dict | None
    scheduler: dict


@dataclass
class RankState:
    """This process's RNG streams and running sums ([loss, correct, seen]) where it stopped."""

    rng: dict
    sums: list[float] | None


@dataclass
class State:
    """Progress, where training goes on, and what a resumed run has yet to take back."""

    progress: Progress
    position: Position = field(default_factory=Position)
    phase_state: PhaseState | None = None  # for the first phase started, if it was in progress
    rank_state: RankState | None = None  # for the first epoch trained (same world size only)

    def take_phase_state(self, phase_index: int) -> PhaseState | None:
        """The checkpoint's optimizer and schedule, once, if they belong to this phase."""
        saved, self.phase_state = self.phase_state, None
        return saved if saved is not None and saved.phase_index == phase_index else None

    def take_rank_state(self) -> RankState | None:
        saved, self.rank_state = self.rank_state, None
        return saved


def fresh(metric: str) -> State:
    return State(Progress(metric=metric))


def restored(resume: Resume, metric: str) -> State:
    """The state a checkpoint saved, with today's train.select_metric."""
    saved = resume.state
    rank = resume.payload.rank_state
    return State(
        progress=Progress(**{**saved["progress"], "metric": metric}),
        position=resume.position,
        phase_state=PhaseState(
            saved["optimizer_phase"], resume.payload.optimizer, saved["scheduler"]
        ),
        rank_state=RankState(rank["rng"], rank.get("sums")) if resume.same_world else None,
    )
