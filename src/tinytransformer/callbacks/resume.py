"""last.ckpt for resuming: written every N steps, at the end, and on SIGINT/SIGTERM before exiting."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.rank_zero import rank_zero_info

LAST = "last.ckpt"


class LastCheckpoint(L.Callback):
    """Saves `<dirpath>/last.ckpt` at optimizer-step boundaries (the only points a resume can start from).

    SIGINT (Ctrl-C) and SIGTERM (preemption, `kill`) do not kill the run: the step in flight finishes,
    last.ckpt is written, and fit() returns with `trainer.stop_reason` set to the signal's name.
    Checkpoint writes are atomic (temporary file + rename), so a SIGKILL mid-write leaves the old file.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int = 500):
        self.path = Path(dirpath) / LAST
        self.every_n_steps = every_n_steps
        self.signal_received: str | None = None
        self._previous_handlers: dict[int, object] = {}
        self._saved_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        self.signal_received = signal.Signals(signum).name

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.fit_loop._should_accumulate():
            return
        stop = self.signal_received is not None
        if trainer.world_size > 1:  # all ranks must stop together; agree every 10 steps, not every step
            stop = trainer.global_step % 10 == 0 and trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self.save(trainer)
            trainer.should_stop = True
            trainer.stop_reason = self.signal_received or "signal"
            rank_zero_info(f"\n{trainer.stop_reason}: saved {self.path} at step {trainer.global_step}")
        elif trainer.global_step % self.every_n_steps == 0:
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()

    def save(self, trainer: L.Trainer) -> None:
        if self._saved_step == trainer.global_step and self.path.exists():
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step = trainer.global_step
