"""TensorBoard's HPARAMS tab with real metrics (never `hp_metric = -1`), and resumed runs shown as one."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

HP_METRICS = (
    "hp/val_loss_best",
    "hp/val_bpc_best",
    "hp/train_loss_final",
    "hp/generalization_gap",
    "hp/best_step",
)


class HParamsLogger(L.Callback):
    """Registers `params` with the hp/ metrics at fit start, then logs the metrics after each validation.

    TensorBoard builds its columns from the keys of the first runs it sees, so every run of a sweep must log
    the same flat key set: conf/callbacks/hparams.yaml gives `params` as `${run_hparams:}`, the run's
    `tinytransformer.hparams.flat_hparams`.
    """

    def __init__(self, params: Mapping[str, Any]):
        self.params = {key: params[key] for key in params}  # plain values (a config node from the YAML)

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                continue
            if trainer.global_step == 0:
                logger.log_hyperparams(self.params, {key: math.nan for key in HP_METRICS})
            else:
                mark_restart(logger, trainer.global_step + 1)

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or pl_module.val_history.best is None:
            return
        best_step, best_loss, best_bpc = pl_module.val_history.best
        metrics = {"hp/val_loss_best": best_loss, "hp/val_bpc_best": best_bpc, "hp/best_step": best_step}
        m = trainer.callback_metrics
        if "train/loss_avg" in m:
            metrics["hp/train_loss_final"] = float(m["train/loss_avg"])
            metrics["hp/generalization_gap"] = float(m["val/loss"]) - float(m["train/loss_avg"])
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


def mark_restart(logger: TensorBoardLogger, step: int) -> None:
    """Tell TensorBoard the run restarted at `step`: it drops the earlier events from `step` on.

    A killed run may have logged steps past its last checkpoint; the resumed run logs them again. TensorBoard
    purges events at or after a SessionLog.START's step, so the run shows each step once, from the resume.
    The mark goes into the file the resumed run writes to: TensorBoard reads a run's files in name (creation
    time) order, and a mark in a newer file of its own would drop the resumed run's steps too.
    """
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    event = Event(step=step, wall_time=time.time(), session_log=SessionLog(status=SessionLog.START))
    logger.experiment.file_writer.add_event(event)  # the open FileWriter, as torch's add_hparams uses it
    logger.experiment.flush()
