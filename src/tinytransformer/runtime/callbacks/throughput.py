"""Throughput in every run: `train/tokens_per_s` and `train/mfu` at log steps, the run's MFU in metrics.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from tinytransformer.runtime.flops import counted_flops_per_token, matmul_precision, peak_flops
from tinytransformer.training.callbacks.steps import OptimizerStepCallback

log = logging.getLogger(__name__)


class Throughput(OptimizerStepCallback):
    """Tokens per second and model FLOPs utilization (MFU), logged every `log_every_n_steps` steps.

    Timed by the host clock between log steps, validation left out, so it costs no host sync: on a GPU the
    host runs ahead of the device by at most its launch queue, a small error over tens of steps.
    MFU = tokens/s x training FLOPs per token / (peak FLOP/s x devices); see tinytransformer.runtime.flops.
    RunSummary puts the run's figures in metrics.json: `train_tokens_per_s` and `mfu` over all of this
    job's training steps, validation left out as in the scalars, beside the FLOPs per token and the peak.

    Args:
        cache_dir: where a CPU's measured peak is cached.
        peak_flops: the peak of one device in FLOP/s, instead of the datasheet's (GPU) or the measured (CPU).
    """

    def __init__(self, cache_dir: str | Path, peak_flops: float | None = None):
        self.cache_dir = Path(cache_dir)
        self.given_peak = peak_flops
        self.flops_per_token: int | None = None
        self.peak: float | None = None
        self.peak_source = ""
        self._mark: tuple[float, int] | None = None  # (clock, global_step) at the window's start
        self._paused = 0.0  # validation time inside the window
        self._trained = (0.0, 0)  # (seconds, steps) of this job's closed windows
        self._validation_start: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        block_size = trainer.datamodule.cfg.block_size
        self.flops_per_token, why = counted_flops_per_token(pl_module.hparams.model, block_size)
        if self.flops_per_token is None:
            log.warning("MFU unknown: the model's FLOPs could not be counted on the meta device (%s)", why)
        if self.given_peak is not None:
            self.peak, self.peak_source = float(self.given_peak), "given (callbacks.throughput.peak_flops)"
        else:
            precision = matmul_precision(str(trainer.precision))
            self.peak, self.peak_source = peak_flops(trainer.strategy.root_device, precision, self.cache_dir)

    def mfu(self, tokens_per_s: float, trainer: L.Trainer) -> float | None:
        if not self.peak or self.flops_per_token is None:
            return None
        return tokens_per_s * self.flops_per_token / (self.peak * trainer.world_size)

    def summary(self, trainer: L.Trainer) -> dict:
        """This job's figures for metrics.json: over its training steps, validation left out (called at
        the end of the fit, it counts the steps since the last log step too)."""
        self._end_pause()  # a fault mid-validation: that validation is not training time either
        self._close_window(trainer.global_step)
        seconds, steps = self._trained
        tokens_per_s = steps * trainer.datamodule.tokens_per_step(trainer) / seconds if seconds > 0 else None
        mfu = None if tokens_per_s is None else self.mfu(tokens_per_s, trainer)
        return {
            "train_tokens_per_s": None if tokens_per_s is None else round(tokens_per_s, 1),
            "mfu": None if mfu is None else round(mfu, 5),
            "flops_per_token": self.flops_per_token,
            "peak_flops": self.peak,
            "peak_source": self.peak_source,
        }

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark, self._paused = (time.perf_counter(), trainer.global_step), 0.0
        self._trained = (0.0, 0)

    def _close_window(self, step: int) -> tuple[int, float] | None:
        """(steps, seconds) since the window's start, validation left out; a new window starts."""
        now = time.perf_counter()
        start, start_step = self._mark or (now, step)
        self._mark, seconds, self._paused = (now, step), now - start - self._paused, 0.0
        if step <= start_step or seconds <= 0:
            return None
        trained_s, trained_steps = self._trained
        self._trained = (trained_s + seconds, trained_steps + step - start_step)
        return step - start_step, seconds

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end_pause()

    def _end_pause(self) -> None:
        if self._validation_start is not None:
            self._paused += time.perf_counter() - self._validation_start
            self._validation_start = None

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % trainer.log_every_n_steps or not self.optimizer_stepped(trainer):
            return
        window = self._close_window(trainer.global_step)
        if window is None:
            return
        steps, seconds = window
        tokens_per_s = steps * trainer.datamodule.tokens_per_step(trainer) / seconds
        metrics = {"train/tokens_per_s": tokens_per_s}
        if (mfu := self.mfu(tokens_per_s, trainer)) is not None:
            metrics["train/mfu"] = mfu
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
