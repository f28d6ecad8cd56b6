"""The run's summary: best/final losses, stop reason and speed, written to metrics.json atomically."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, Timer
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tinytransformer.files import write_json_atomic
from tinytransformer.runtime.callbacks.processes import job_start_time
from tinytransformer.runtime.callbacks.throughput import Throughput
from tinytransformer.runtime.runs import FAILED, INTERRUPTED, RUNNING
from tinytransformer.training.callbacks.resume import RunInterrupted

# One job's speed: a resumed job starts without the checkpoint's, and records its own at its end or fault.
SPEED_KEYS = (
    "wall_s",
    "tokens_per_s",
    "train_tokens_per_s",
    "mfu",
    "flops_per_token",
    "peak_flops",
    "peak_source",
)


class RunSummary(L.Callback):
    """Tracks best and final metrics; writes `metrics.json` after every validation and at the end.

    The run's speed: wall_s and tokens_per_s of its fit (validation included), and with a Throughput
    callback, train_tokens_per_s and MFU (validation left out), FLOPs per token and the peak.

    Its state is saved in checkpoints, so a resumed run's summary is that of an uninterrupted run.

    Args:
        path: where metrics.json goes.
        started: when the job started (time.time()), for startup_s; default: this job's start.
    """

    def __init__(self, path: str | Path, started: float | None = None):
        self.path = Path(path)
        self.state: dict[str, Any] = {}  # what metrics.json holds; saved in checkpoints
        self.static: dict[str, Any] = {}  # added after fit() by the recipe: the test results, best_ckpt_path
        self.started = job_start_time() if started is None else started
        self._facts: dict[str, Any] = {}
        self._fit_start: float | None = None  # while training
        self._fit_ended = False
        self._start_step = 0
        self._timed_startup = False

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.state = dict(state_dict)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._facts = run_facts(trainer, pl_module)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Into the state, after a checkpoint's was restored: this job's facts, and (with ddp_spawn) back to
        # the process that started fit(), as the launcher returns callback states.
        self._fit_start, self._start_step = time.perf_counter(), trainer.global_step
        self.state.pop("stop_reason", None)
        self._drop_speed()
        self.state.update(self._facts, status=RUNNING, threads=torch.get_num_threads())

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx) -> None:
        if not self._timed_startup and self.started is not None:
            self.state["startup_s"] = round(time.time() - self.started, 2)  # job start -> first step
            self._timed_startup = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        step = trainer.global_step
        val_loss = float(m["val/loss"])
        self.state.update(
            final_val_loss=val_loss, final_val_bpc=float(m["val/bpc"]), steps=step, final_val_step=step
        )
        if "train/loss_avg" in m:
            self.state["final_train_loss"] = float(m["train/loss_avg"])
            self.state["final_train_bpc"] = float(m["train/bpc_avg"])
        best_step, best_loss, best_bpc = pl_module.val_history.best
        self.state.update(best_val_loss=best_loss, best_val_bpc=best_bpc, best_step=best_step)
        self.write(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.state["steps"] = trainer.global_step
        self.state["stop_reason"] = stop_reason(trainer)
        self._record_speed(trainer)
        self._fit_start, self._fit_ended = None, True  # a fault in testing after it keeps the fit's speed
        self.write(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed at its last step (killed after its final validation saved last.ckpt) has no step
        # to train: Lightning calls no on_train_end, but this, in each process that ran the fit.
        self.state.setdefault("stop_reason", stop_reason(trainer))

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not self.state and self.path.is_file():  # a resume failing as it loads: keep the run's record
            with contextlib.suppress(ValueError):  # torn: what follows is all there is to say
                self.state = json.loads(self.path.read_text())
        # Lightning's SIGTERMException and Ctrl-C: signals outside training (the final test), stops like those in it
        signal_name = "SIGTERM" if isinstance(exception, SIGTERMException) else None
        signal_name = "SIGINT" if isinstance(exception, KeyboardInterrupt) else signal_name
        reason = getattr(exception, "stop_reason", None) or signal_name or type(exception).__name__
        self.state["stop_reason"] = reason
        if self._fit_start is not None or self._fit_ended or "steps" not in self.state:
            self.state["steps"] = trainer.global_step
        self.state["status"] = INTERRUPTED if isinstance(exception, RunInterrupted) or signal_name else FAILED
        if self._fit_start is not None:
            self._record_speed(trainer)  # up to the fault
        elif not self._fit_ended:  # before training began
            self._drop_speed()
        self.write(trainer)

    def _drop_speed(self) -> None:
        """No speed yet: a restored checkpoint's is an earlier job's."""
        for key in SPEED_KEYS:
            self.state.pop(key, None)

    def _record_speed(self, trainer: L.Trainer) -> None:
        """This job's speed since its fit started (SPEED_KEYS)."""
        if self._fit_start is None:
            return
        wall = time.perf_counter() - self._fit_start
        tokens = (trainer.global_step - self._start_step) * trainer.datamodule.tokens_per_step(trainer)
        self.state.update(wall_s=round(wall, 3), tokens_per_s=round(tokens / max(wall, 1e-9), 1))
        for meter in (c for c in trainer.callbacks if isinstance(c, Throughput)):
            self.state.update(meter.summary(trainer))

    def summary(self) -> dict[str, Any]:
        return {**self.static, **self.state}

    @rank_zero_only
    def write(self, trainer: L.Trainer) -> None:
        write_json_atomic(self.path, self.summary())


def run_facts(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """What is known before training: it goes into metrics.json beside the results."""
    dm = trainer.datamodule
    world_size = trainer.num_devices * trainer.num_nodes
    facts = {
        "vocab_size": dm.tokenizer.vocab_size,
        "params": sum(p.numel() for p in pl_module.model.parameters()),
        "corpus": dm.corpus.name,
        "train_tokens": len(dm.splits["train"]),
        "precision": str(trainer.precision),
        "world_size": world_size,
        "effective_batch_size": dm.cfg.batch_size * trainer.accumulate_grad_batches * world_size,
    }
    if dm.corpus.entropy_floor_bpc is not None:
        facts["entropy_floor_bpc"] = dm.corpus.entropy_floor_bpc
    return facts


def _early_stopped(callback: EarlyStopping) -> bool:
    """Whether an EarlyStopping callback stopped this fit: its patience ran out, or a threshold or a
    non-finite value ended it (its `stopping_reason` alone outlives a resume that improved again)."""
    thresholds = (
        EarlyStoppingReason.STOPPING_THRESHOLD,
        EarlyStoppingReason.DIVERGENCE_THRESHOLD,
        EarlyStoppingReason.NON_FINITE_METRIC,
    )
    return callback.wait_count >= callback.patience or callback.stopping_reason in thresholds


def stop_reason(trainer: L.Trainer) -> str:
    """Why fit() returned: the first rule that fired."""
    reason = getattr(trainer.lightning_module, "stop_reason", None)
    if reason:  # a callback's LanguageModel.stop(reason): sample quality, an Optuna pruner
        return reason
    if any(isinstance(c, EarlyStopping) and _early_stopped(c) for c in trainer.callbacks):
        return "early_stopping"
    if trainer.interrupted:
        return "interrupted"
    if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
        return "max_steps"
    # trainer.max_time: Lightning adds a Timer, which stops the run once no time remains.
    remaining = [c.time_remaining() for c in trainer.callbacks if isinstance(c, Timer)]
    if any(r is not None and r <= 0 for r in remaining):
        return "max_time"
    return "unknown"
