"""The rules that read the run's val history (training.metrics.ValHistory): the best checkpoint and
early stopping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint


class BestCheckpoint(Checkpoint):
    """`<dirpath>/best-step=<N>.ckpt`: the weights at the lowest val loss so far, one file.

    Being a `Checkpoint`, Lightning runs it after the other callbacks, so the file holds their state after
    this validation (the summary's best included).
    """

    def __init__(self, dirpath: str | Path):
        self.dirpath = Path(dirpath)
        self.best_model_path = ""

    def state_dict(self) -> dict[str, Any]:
        return {"best_model_path": self.best_model_path}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_model_path = state_dict.get("best_model_path", "")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if trainer.sanity_checking or not pl_module.val_history.is_best(step):
            return
        previous, path = self.best_model_path, self.dirpath / f"best-step={step}.ckpt"
        self.best_model_path = str(path)  # before the save: the file names itself as the best
        # Every rank calls it (a barrier); rank 0 writes. The full state: a best checkpoint also resumes.
        trainer.save_checkpoint(path, weights_only=False)
        if previous and previous != self.best_model_path and trainer.is_global_zero:
            Path(previous).unlink(missing_ok=True)


class EarlyStopping(L.Callback):
    """Stops the run once `patience` validations in a row did not lower the best val loss by more than
    `min_delta` (the val history decides, so a resumed run counts on where it stopped)."""

    def __init__(self, patience: int = 5, min_delta: float = 0.0):
        self.patience, self.min_delta = patience, min_delta

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and pl_module.val_history.stalled(self.patience, self.min_delta):
            trainer.should_stop = True
            trainer.stop_reason = "early_stopping"  # how our callbacks say why fit() returned
