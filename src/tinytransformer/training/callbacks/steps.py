"""The base of callbacks that act once per optimizer step, also when a step spans several batches."""

from __future__ import annotations

import lightning as L


class OptimizerStepCallback(L.Callback):
    """A callback whose on_train_batch_end acts only on the batches that end an optimizer step.

    With `trainer.accumulate_grad_batches=k`, k batches make one step and `trainer.global_step` counts
    steps, so a `global_step % n` rule alone would fire on each of the k batches. A batch ended a step
    when it moved global_step. A subclass that overrides on_train_batch_start must call super().
    """

    _step_at_batch_start: int | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_batch_start = trainer.global_step

    def optimizer_stepped(self, trainer: L.Trainer) -> bool:
        """Whether the current training batch ended an optimizer step (for on_train_batch_end)."""
        return trainer.global_step != self._step_at_batch_start
