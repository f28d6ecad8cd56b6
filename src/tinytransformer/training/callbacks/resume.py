"""last.ckpt for resuming: written every N steps, at the end, and on a stop signal before exiting."""

from __future__ import annotations

import io
import os
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tinytransformer.files import LAST, write_atomic
from tinytransformer.training.callbacks.steps import OptimizerStepCallback

# SIGUSR2: SLURM's notice before a time limit (submitit's --signal), after which submitit requeues the job.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


class RunInterrupted(Exception):
    """A stop signal arrived: last.ckpt was saved and the run stops; resume it with `resume=<run dir>`."""

    def __init__(self, signal_name: str, step: int, path: Path, validated: bool = False):
        checked = (
            "validated at the stop"
            if validated
            else "not validated at the stop: metrics.json holds the last validation before it"
        )
        super().__init__(f"{signal_name}: saved {path} at step {step} ({checked})")
        self.stop_reason, self.step, self.path = signal_name, step, path

    @property
    def exit_code(self) -> int:
        return 128 + signal.Signals[self.stop_reason].value


class LastCheckpoint(Checkpoint, OptimizerStepCallback):
    """Saves `<dirpath>/last.ckpt` where a resumed run can continue exactly: between two training steps.

    When a validation follows a step, the save waits for it, so the checkpoint holds its results (best
    score, early-stopping count, summary) and a resumed run neither repeats nor skips it. SIGINT (Ctrl-C),
    SIGTERM (preemption, `kill`) and SIGUSR2 (SLURM's time-limit notice) do not kill the run: at the next
    such point last.ckpt is written and RunInterrupted is raised (the entry point then hands SIGUSR2 on to
    submitit, which requeues the job). Writes are atomic (temporary file + rename): a SIGKILL mid-write
    keeps the previous file. Being a `Checkpoint`, Lightning runs it after the other callbacks, and the
    recipe puts it after the other checkpoints, so it saves their updated state (the best checkpoint's too).
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int = 500):
        self.path = Path(dirpath) / LAST
        self.every_n_steps = every_n_steps
        self.signal_received: str | None = None
        self._previous_handlers: dict[int, object] = {}
        self._saved_step: int | None = None
        self._stop_at_step_end = False

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        """A run dir moved or copied since the checkpoint: its best checkpoints' paths move with it. From
        another dir, stock ModelCheckpoint restores best_model_path alone: it would test the old dir's file
        (gone, if moved) and forget the best score and the top k. (A dirpath changed on resume, whose dir
        holds no best checkpoint, is left to Lightning.)"""
        for callback in trainer.checkpoint_callbacks:
            state = checkpoint["callbacks"].get(callback.state_key)
            if not isinstance(callback, ModelCheckpoint) or not state or state["dirpath"] == callback.dirpath:
                continue
            old, new = state["dirpath"].rstrip(os.sep) + os.sep, callback.dirpath.rstrip(os.sep) + os.sep
            best = state.get("best_model_path") or ""
            if not (best.startswith(old) and os.path.isfile(new + best[len(old) :])):
                continue
            state["dirpath"] = callback.dirpath
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if isinstance(state.get(key), str) and state[key].startswith(old):
                    state[key] = new + state[key][len(old) :]
            state["best_k_models"] = {
                new + path[len(old) :] if path.startswith(old) else path: score
                for path, score in state["best_k_models"].items()
            }

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        self.signal_received = signal.Signals(signum).name

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.optimizer_stepped(trainer):
            # A stop asked between micro-batches (max_time's Timer checks every batch) waits for the step's
            # end: a run stopped mid-step would resume with a short step and its batch stream shifted.
            self._stop_at_step_end = self._stop_at_step_end or trainer.should_stop
            trainer.should_stop = False
            return
        if self._stop_at_step_end or 0 < trainer.max_steps <= trainer.global_step:
            # A stop request makes Lightning validate after this step (once, also on a validation step),
            # so every run's results describe its final weights. max_time and a sample-quality stop set
            # it too; Lightning runs this callback after the others.
            trainer.should_stop = True
        if not validation_follows(trainer):
            self._at_resume_point(trainer, pl_module, validated=False)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._at_resume_point(trainer, pl_module, validated=True)

    def _at_resume_point(self, trainer: L.Trainer, pl_module: L.LightningModule, validated: bool) -> None:
        stop = self.signal_received is not None
        if trainer.world_size > 1:  # all ranks must stop together; agree every 10 steps, not every step
            stop = trainer.global_step % 10 == 0 and trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self.save(trainer, pl_module)
            raise RunInterrupted(self.signal_received or "SIGTERM", trainer.global_step, self.path, validated)
        if trainer.global_step % self.every_n_steps == 0:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer, pl_module)
        self.restore_signal_handlers()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.restore_signal_handlers()

    def restore_signal_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()

    def save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Every rank must decide alike (saving is collective): only rank 0 may see the file on its disk.
        written = self.path.exists() or trainer.world_size > 1
        if self._saved_step == trainer.global_step and written:
            return
        pl_module.check_finite()  # never replace a good last.ckpt with NaN weights
        for logger in trainer.loggers:  # events up to the checkpoint survive a SIGKILL
            logger.save()
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step = trainer.global_step


def validation_follows(trainer: L.Trainer) -> bool:
    """Whether Lightning validates right after the current training step: at int val_check_interval
    steps, and when the run is asked to stop (see on_train_batch_end)."""
    if trainer.should_stop:
        return trainer.enable_validation
    every = trainer.val_check_batch
    if not isinstance(every, int) or every <= 0:
        return False
    # enable_validation last: it inspects the module and its loaders (~40 us, 0.1 % of a CPU step)
    return (trainer.global_step * trainer.accumulate_grad_batches) % every == 0 and trainer.enable_validation


class AtomicCheckpointIO(TorchCheckpointIO):
    """Every checkpoint (last.ckpt, best-*.ckpt) goes to a temporary file beside its target, then is renamed
    over it: a full disk or a kill mid-write leaves the previous checkpoint whole and no temporary file.

    Lightning's own save writes to a temporary file in /tmp and moves it into place; across two file
    systems that move is a copy, which a full disk cuts short, leaving a partial checkpoint.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, buffer.getbuffer())  # a view: no second copy of the checkpoint in memory
