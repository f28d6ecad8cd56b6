"""The learning rate, logged as `train/lr` at log steps."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from tinytransformer.training.callbacks.steps import OptimizerStepCallback


class LearningRateLogger(OptimizerStepCallback):
    """Logs the lr every `log_every_n_steps` steps, straight to the loggers.

    A Python float given to `self.log` every step would be copied to the GPU each step (a host sync);
    Lightning's LearningRateMonitor names one curve per parameter group, ours has one curve.
    """

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % trainer.log_every_n_steps or not self.optimizer_stepped(trainer):
            return
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        for logger in trainer.loggers:
            logger.log_metrics({"train/lr": lr}, step=trainer.global_step)
