"""Throughput in every run: `train/tokens_per_s` and `train/mfu` at log steps, the run's MFU in metrics.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from tinytransformer.training.callbacks.steps import OptimizerStepCallback
from tinytransformer.training.flops import counted_flops_per_token, matmul_precision, peak_flops

log = logging.getLogger(__name__)


class Throughput(OptimizerStepCallback):
    """Tokens per second and model FLOPs utilization (MFU), logged every `log_every_n_steps` steps.

    Timed by the host clock between log steps, validation left out, so it costs no host sync: on a GPU the
    host runs ahead of the device by at most its launch queue, a small error over tens of steps.
    MFU = tokens/s x training FLOPs per token / (peak FLOP/s x devices); see tinytransformer.training.flops.
    RunSummary puts the run's figures (whole-run tokens/s, MFU, FLOPs per token, the peak) in metrics.json.

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

    def summary(self, tokens_per_s: float, trainer: L.Trainer) -> dict:
        """The run's figures for metrics.json, from its whole-run tokens/s."""
        mfu = self.mfu(tokens_per_s, trainer)
        return {
            "mfu": None if mfu is None else round(mfu, 5),
            "flops_per_token": self.flops_per_token,
            "peak_flops": self.peak,
            "peak_source": self.peak_source,
        }

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark, self._paused = (time.perf_counter(), trainer.global_step), 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validation_start is not None:
            self._paused += time.perf_counter() - self._validation_start
            self._validation_start = None

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % trainer.log_every_n_steps or not self.optimizer_stepped(trainer):
            return
        now, step = time.perf_counter(), trainer.global_step
        start, start_step = self._mark or (now, step)
        self._mark, seconds, self._paused = (now, step), now - start - self._paused, 0.0
        if step <= start_step or seconds <= 0:
            return
        tokens_per_s = (step - start_step) * trainer.datamodule.tokens_per_step(trainer) / seconds
        metrics = {"train/tokens_per_s": tokens_per_s}
        if (mfu := self.mfu(tokens_per_s, trainer)) is not None:
            metrics["train/mfu"] = mfu
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
