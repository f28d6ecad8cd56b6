"""Faults injected into a real run from the command line (`+callbacks.<name>._target_=tests.fault_callbacks.<class>`,
with the repo root on PYTHONPATH), where patching in the test process cannot reach: spawned DDP workers."""

from __future__ import annotations

import math
import os
import signal
import sys
import time

import lightning as L


class NonFiniteLossOnOneRank(L.Callback):
    """Makes `rank`'s training loss sum NaN during step `step`, the other ranks' staying finite."""

    def __init__(self, rank: int, step: int):
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step - 1:
            pl_module._loss_sum.fill_(math.nan)


class KillAfterFinalValidation(L.Callback):
    """SIGKILLs the run right after its final validation saved last.ckpt, before any on_train_end: at the
    end of the (only) epoch, which Lightning closes between the two."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == trainer.max_steps:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalDuringTest(L.Callback):
    """Sends this process `signal` (SIGTERM, SIGINT) as the final test starts: after training, with last.ckpt
    written."""

    def __init__(self, signal: str):
        self.signal = signal

    def on_test_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0:
            os.kill(os.getpid(), signal.Signals[self.signal])


class FailWhereTold(L.Callback):
    """Raises as training starts in the run dir whose name ends with $FAIL_RUN: a job that fails in one attempt
    at a sweep and succeeds in the next (without the variable), under the same overrides."""

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if os.environ.get("FAIL_RUN") and trainer.default_root_dir.endswith(os.environ["FAIL_RUN"]):
            raise RuntimeError(f"told to fail in {trainer.default_root_dir}")


class KillAfterStep(L.Callback):
    """SIGKILLs the run (every rank) as the step after `step` starts: after its last.ckpt at `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class ExitDuringTest(L.Callback):
    """sys.exit(`code`) as the final test starts, as submitit's requeue handler does on SLURM's SIGUSR2."""

    def __init__(self, code: int):
        self.code = code

    def on_test_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        sys.exit(self.code)


class SlowSteps(L.Callback):
    """Sleeps $SLOW_STEP_S seconds after each training step where that variable is set: keeps a run going
    while a test waits for it, without changing its numbers (the same run without the variable is fast)."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if seconds := os.environ.get("SLOW_STEP_S"):
            time.sleep(float(seconds))
