"""The run's hparams and hp/ metrics in every logger; TensorBoard's HPARAMS tab opening on a sweep's comparison."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from tinytransformer.files import write_atomic

HP_METRICS = (
    "hp/val_loss_best",
    "hp/val_bpc_best",
    "hp/train_loss_final",
    "hp/generalization_gap",
    "hp/best_step",
)
# The sweep's experiment summary, at its dir: TensorBoard takes columns and their order from it.
EXPERIMENT_FILE = "events.out.tfevents.hparams"


class HParamsLogger(L.Callback):
    """Gives every logger `params` at fit start, and the hp/ metrics after each validation.

    TensorBoard builds its columns from the keys of the first runs it sees, so every run of a sweep must log
    the same flat key set: conf/callbacks/hparams.yaml gives `params` as `${run_hparams:}`, the run's
    `tinytransformer.runtime.hparams.flat_hparams`. In a sweep, `sweep` ({"dir", "varied"}: `${run_sweep:}`) makes
    the HPARAMS tab open with the varied hparams first and shown, and the hp/ metrics.
    """

    def __init__(self, params: Mapping[str, Any], sweep: Mapping[str, Any] | None = None):
        self.params = {key: params[key] for key in params}  # plain values (a config node from the YAML)
        self.sweep = {"dir": str(sweep["dir"]), "varied": list(sweep["varied"])} if sweep else None

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(self.params)  # a resumed run is a new run there
            elif trainer.global_step == 0:
                register_session(logger, self.params)
            else:
                mark_restart(logger, trainer.global_step + 1)
        if self.sweep and any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers):
            write_experiment(Path(self.sweep["dir"]), self.params, set(self.sweep["varied"]))

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


def register_session(logger: TensorBoardLogger, params: dict[str, Any]) -> None:
    """The run's hparams (a session start) with its hp/ metrics registered as NaN, so that the HPARAMS tab has
    their columns from the start.

    Unlike `log_hyperparams(params, metrics)`, no experiment summary goes into the run: TensorBoard takes the
    columns from one arbitrary run's summary, whose hparams all read as never differing (sorted by name).
    Without one it computes them from every run; a sweep writes its own (write_experiment).
    """
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    logger.log_hyperparams(params)  # hparams.yaml only: no metrics given, default_hp_metric is off
    logger.log_metrics({key: math.nan for key in HP_METRICS}, step=0)
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for key, value in params.items():
        kind = "bool_value" if isinstance(value, bool) else "number_value"
        setattr(start.hparams[key], kind if isinstance(value, int | float) else "string_value", value)
    data = plugin_data_pb2.HParamsPluginData(session_start_info=start)
    logger.experiment.file_writer.add_summary(_summary(metadata.SESSION_START_INFO_TAG, data), 0)


def write_experiment(sweep_dir: Path, params: dict[str, Any], varied: set[str]) -> None:
    """The sweep's experiment summary at `sweep_dir` (its first job writes it; once, atomically): the hparams
    flagged `differs` when the sweep varies them (TensorBoard lists those first and shows the first five),
    and the hp/ metrics, hp/val_loss_best first (shown: the first five)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    path = sweep_dir / EXPERIMENT_FILE
    if path.exists():
        return
    infos = [
        api_pb2.HParamInfo(name=key, type=_data_type(value), differs=key in varied)
        for key, value in sorted(params.items(), key=lambda item: (item[0] not in varied, item[0]))
    ]
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in HP_METRICS]
    buffer = io.BytesIO()
    records = RecordWriter(buffer)
    records.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
    experiment = api_pb2.Experiment(time_created_secs=time.time(), hparam_infos=infos, metric_infos=metrics)
    data = plugin_data_pb2.HParamsPluginData(experiment=experiment)
    event = Event(wall_time=time.time(), summary=_summary(metadata.EXPERIMENT_TAG, data))
    records.write(event.SerializeToString())
    write_atomic(path, buffer.getvalue())


def _summary(tag: str, data):
    """A summary of the hparams plugin's `data`, as tensorboard.plugins.hparams.summary builds it (which
    needs TensorFlow)."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata

    summary = Summary()
    summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)
    return summary


def _data_type(value: Any) -> int:
    from tensorboard.plugins.hparams import api_pb2

    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    return api_pb2.DATA_TYPE_FLOAT64 if isinstance(value, int | float) else api_pb2.DATA_TYPE_STRING


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
