"""Which weights the run keeps (RUN_DIR/model), and when a phase stops early.

After every epoch the better of the trained and the EMA weights on val, by train.select_metric
(ties: the lower loss), replaces RUN_DIR/model if it beats the best epoch so far; without a val
split the last epoch's trained weights are kept. A phase stops early after
train.early_stopping_patience epochs without a better one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator
from torch import nn

from trainer import runtime
from trainer.config import ModelConfig
from trainer.data.transforms import Preprocessing
from trainer.model.folder import save_model_folder
from trainer.train.ema import ModelEMA, NoEMA
from trainer.train.state import Progress


@dataclass
class Selector:
    """Keeps the best weights in RUN_DIR/model and tells when a phase has stopped improving."""

    accelerator: Accelerator
    folder: Path  # RUN_DIR/model
    model_cfg: ModelConfig
    class_names: list[str]
    pre: Preprocessing
    patience: int | None  # train.early_stopping_patience
    # Which mirror images training showed the model (a phase's augmentation, data.hflip/vflip):
    # test-time augmentation mirrors only the way the model was trained to see.
    flips: dict[str, bool]

    def keep_best(
        self, progress: Progress, model: nn.Module, ema: ModelEMA | NoEMA, val: dict, ema_val: dict
    ) -> bool:
        """Save the better of the trained (`model`, unwrapped) and the EMA weights if it beats
        the best so far (without a val split: the trained weights). True if it did."""
        if not val.get("samples"):
            self._save(progress, model, val, "trained")
            return True
        candidates = [(val, model, "trained")]
        if ema_val.get("samples"):
            candidates.append((ema_val, ema.module, "ema"))
        best_val, weights, kind = max(candidates, key=lambda c: progress.score(c[0]))
        if progress.improves(best_val):
            progress.record_best(best_val)
            progress.stale_epochs = 0
            self._save(progress, weights, best_val, kind)
            return True
        progress.stale_epochs += 1
        return False

    def stop_early(self, progress: Progress) -> bool:
        """train.early_stopping_patience epochs in this phase without a better model."""
        if self.patience and progress.stale_epochs >= self.patience:
            self.accelerator.print(
                f"early stopping: {self.patience} epochs without a better {progress.metric}"
            )
            return True
        return False

    def _save(self, progress: Progress, model: nn.Module, val: dict, weights: str) -> None:
        if self.accelerator.is_main_process:
            extra = {
                "selected": {
                    "epoch": progress.epoch,
                    "weights": weights,
                    "metric": progress.metric,
                    "val_accuracy": val.get("accuracy"),
                    "val_loss": val.get("loss"),
                },
                "trainer_version": runtime.package_version("trainer"),
                "trained_flips": self.flips,
            }
            save_model_folder(model, self.folder, self.model_cfg, self.class_names, self.pre, extra)
        self.accelerator.wait_for_everyone()
