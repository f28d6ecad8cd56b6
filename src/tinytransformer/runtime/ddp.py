"""The DDP strategy for how the run's processes start: spawned by fit(), re-run by Lightning, torchrun, SLURM.

We start no processes ourselves. With `ddp_spawn`, fit() runs in new processes and the calling process only
waits; Lightning sends back the weights, the best checkpoint path and the logged metrics, but not the
callbacks' state, so the run's summary (best/final losses, stop reason, speed) would be lost. Our
`SpawnDDPStrategy` sends that back too, hands Ctrl-C and SIGTERM on to the workers (which save last.ckpt and
stop), and keeps the main process's idle callbacks from writing over what the workers wrote when they fail.

Lightning has no public API for a launcher's results: `_MultiProcessingLauncher`, `_configure_launcher` and
`_launcher` are private, so pyproject.toml pins Lightning's minor version and tests/test_lightning_api.py
checks them.
"""

from __future__ import annotations

import functools
import io
import os
import signal
import threading
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from lightning.pytorch.trainer.states import TrainerStatus

from tinytransformer.runtime.launch import launcher_world
from tinytransformer.training.callbacks.resume import LastCheckpoint, RunInterrupted
from tinytransformer.training.lightning_module import NonFiniteLoss


def launch_settings(trainer_kwargs: dict[str, Any]) -> dict[str, Any]:
    """`strategy`, `devices`, `num_nodes` and `plugins` of lightning.Trainer for how the processes start."""
    kwargs = dict(trainer_kwargs)
    strategy = kwargs.get("strategy", "auto")
    world = launcher_world()
    if world is not None:  # torchrun started the processes: DDP joins them, whatever the config said
        kwargs["devices"], kwargs["num_nodes"] = world
    slurm_tasks = _slurm_runs_the_ranks(kwargs)
    if world is not None or slurm_tasks:
        kwargs["strategy"] = "ddp" if strategy == "ddp_spawn" else strategy
    elif strategy == "ddp_spawn":
        kwargs["strategy"] = SpawnDDPStrategy()
    if slurm_tasks:  # requeueing is submitit's (SIGUSR2 -> last.ckpt -> requeue), not Lightning's SIGUSR1
        kwargs["plugins"] = [SLURMEnvironment(auto_requeue=False)]
    return kwargs


def _slurm_runs_the_ranks(kwargs: dict[str, Any]) -> bool:
    """Whether SLURM started one task per rank (Lightning's rule: as many tasks as devices x nodes)."""
    devices, nodes = kwargs.get("devices", 1), kwargs.get("num_nodes", 1)
    if not SLURMEnvironment.detect() or not isinstance(devices, int) or devices < 1:
        return False
    return int(os.environ.get("SLURM_NTASKS", "1")) == devices * nodes


class SpawnDDPStrategy(DDPStrategy):
    """DDP in processes started by fit() (`trainer.strategy=ddp_spawn`): no re-run of the command line.

    Lightning's own ddp_spawn loses the workers' run summary (the main process writes an empty metrics.json
    over rank 0's) and ends a non-finite loss in every worker's traceback: tests/test_stock_ddp_spawn.py.
    """

    def __init__(self, **kwargs: Any):
        super().__init__(start_method="spawn", **kwargs)

    def _configure_launcher(self) -> None:
        self._launcher = _CallbackStateLauncher(self, start_method="spawn")


class _CallbackStateLauncher(_MultiProcessingLauncher):
    def get_extra_results(self, trainer: L.Trainer) -> dict[str, Any]:
        extra = super().get_extra_results(trainer)
        buffer = io.BytesIO()
        states = {c.state_key: state for c in trainer.callbacks if (state := c.state_dict())}
        torch.save(states, buffer)  # bytes: no shared-memory tensors
        extra["callback_states_bytes"] = buffer.getvalue()
        return extra

    def update_main_process_results(self, trainer: L.Trainer, extra: dict[str, Any]) -> None:
        super().update_main_process_results(trainer, extra)
        states = torch.load(io.BytesIO(extra["callback_states_bytes"]), weights_only=True)
        for callback in trainer.callbacks:
            if state := states.get(callback.state_key):
                callback.load_state_dict(state)

    def launch(self, function, *args: Any, trainer: L.Trainer | None = None, **kwargs: Any) -> Any:
        received: list[str] = []

        def hand_on(signum: int, frame) -> None:
            received.append(signal.Signals(signum).name)
            for proc in self.procs:
                if proc.is_alive() and proc.pid is not None:
                    os.kill(proc.pid, signum)

        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, hand_on) for sig in (signal.SIGINT, signal.SIGTERM)}
        if trainer is not None:
            function = functools.partial(_report_errors, function, trainer)
        try:
            result = super().launch(function, *args, trainer=trainer, **kwargs)
        except Exception:
            if trainer is None:
                raise
            last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
            trainer.callbacks = []  # the workers ran them (rank 0 wrote metrics.json); these saw nothing
            if received and last is not None and last.path.exists():
                step = torch.load(last.path, map_location="cpu", mmap=True, weights_only=True)["global_step"]
                raise RunInterrupted(received[0], step, last.path) from None
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if isinstance(result, _Failed):
            trainer.callbacks = []  # the workers ran them, as above
            raise result.exception
        return result


class _Failed:
    """What a worker returns instead of raising a NonFiniteLoss: every rank returns it (they stop together),
    the main process raises it, and the user reads one line instead of every worker's traceback. Only for
    an error every rank raises at the same step: a worker that returned while the others trained on would
    leave them waiting at their next collective. A plain class: Lightning sends a worker's results through
    move_data_to_device, which rebuilds dataclasses."""

    def __init__(self, exception: NonFiniteLoss):
        self.exception = exception


def _report_errors(function, trainer: L.Trainer, *args: Any, **kwargs: Any) -> Any:
    """Run `function` in a worker; on an error, call the on_exception hooks there, as one process would
    (Lightning does so only in the main process, whose callbacks saw none of the run)."""
    try:
        return function(*args, **kwargs)
    except BaseException as exception:
        trainer.state.status = TrainerStatus.INTERRUPTED
        for callback in trainer.callbacks:
            callback.on_exception(trainer, trainer.lightning_module, exception)
        if trainer.datamodule is not None:
            trainer.datamodule.on_exception(exception)
        trainer.strategy.on_exception(exception)
        for logger in trainer.loggers:
            logger.finalize("failed")
        if isinstance(exception, NonFiniteLoss):  # raised on every rank at once (check_finite all-reduces)
            # The ranks end together: a rank that exited while another still held the process group was
            # sometimes aborted in gloo's teardown ("terminate called without an active exception").
            trainer.strategy.barrier("non-finite loss")
            torch.distributed.destroy_process_group()
            return _Failed(exception)
        raise  # torch stops the other workers at once
