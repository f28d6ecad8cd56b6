"""One job as Hydra runs it, the task function of scripts/train.py: train, and end a failure as a user
reads it. A single run ends in one line and an exit code; a sweep records the failed job and goes on."""

from __future__ import annotations

import errno
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tinytransformer.errors import EXIT_OS_ERROR, UserError, os_error_line
from tinytransformer.files import LAST
from tinytransformer.runtime import launch, runs, sweeps
from tinytransformer.runtime.config import CONFIG_DIR, register_schemas


def register_resolvers() -> None:
    """`${sweep_job_name:}` in conf/hydra/default.yaml: sweep jobs named by what differs between them."""
    from omegaconf import OmegaConf

    def sweep_job_name(*, _root_) -> str:
        return sweeps.job_name(_root_.hydra, CONFIG_DIR)

    OmegaConf.register_new_resolver("sweep_job_name", sweep_job_name, replace=True)


# At import: a sweep job may run in a process that only unpickles the task function (submitit).
register_resolvers()
register_schemas()


def train_job(cfg) -> float | None:
    """The Hydra task: train one job; in a sweep, a failing job is recorded and the sweep goes on."""
    import logging
    import signal

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from tinytransformer.runtime.callbacks.processes import isolated_job
    from tinytransformer.runtime.recipe import StoppedWhileTesting, train
    from tinytransformer.training.callbacks.resume import RunInterrupted
    from tinytransformer.training.lightning_module import NonFiniteLoss

    log = logging.getLogger("tinytransformer")
    threading.excepthook = _quiet_os_errors_in_threads
    hc = HydraConfig.get()
    output_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    job = hc.job.num if multirun else None  # a single run has no job number
    rank_zero = launch.is_rank_zero()
    if not rank_zero:  # one train.log, rank 0's (SLURM starts every task with Hydra's log handlers)
        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)
            handler.close()
    ckpt = str(Path(cfg.resume) / "checkpoints" / LAST) if cfg.get("resume") else None
    if multirun and not ckpt and (last := runs.checkpoint_to_continue(output_dir)):
        ckpt = str(last)  # a requeued SLURM job or a re-run sweep: same run dir, continue where it stopped
        log.info(f"job {hc.job.num}: continuing {output_dir} from {last}")
    if not multirun and rank_zero:
        log.info(OmegaConf.to_yaml(cfg, resolve=False))
    try:
        if rank_zero:
            runs.lock_run_dir(output_dir)  # a sweep job's own dir (a single run's was locked before Hydra)
            if not ckpt and multirun and (earlier := runs.start_over(output_dir)):  # a re-run of the sweep
                log.info(
                    f"job {hc.job.num}: starting {output_dir} over (no {LAST}): removed {', '.join(earlier)}"
                )
        with isolated_job(), out_of_memory_as_user_error():
            results = train(cfg, output_dir, ckpt_path=ckpt)
    except OSError as err:
        if isinstance(err, ConnectionError | TimeoutError):  # DDP's sockets, not a write
            return _job_failed(err, output_dir, multirun, job)
        _write_failed(err, output_dir, job, Path(hc.sweep.dir))
        return None
    except RunInterrupted as err:
        if rank_zero:
            log.warning(f"\n{err}. Resume with: python scripts/train.py resume={output_dir}")
        if err.stop_reason == "SIGUSR2":  # SLURM's time-limit notice: submitit's handler requeues the job
            signal.raise_signal(signal.SIGUSR2)
        sys.exit(err.exit_code)
    except StoppedWhileTesting as err:
        if rank_zero:
            log.warning(f"\n{err}. Resume with: python scripts/train.py resume={output_dir}")
        sys.exit(err.exit_code)
    except (UserError, NonFiniteLoss) as err:
        # Not recorded: a refused resume (the run is as it was), a run dir another process writes.
        if not isinstance(err, runs.RunDirInUse) and (
            not cfg.get("resume") or isinstance(err, NonFiniteLoss)
        ):
            runs.record_failure(output_dir, str(err))
        if not multirun:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(err.exit_code if isinstance(err, UserError) else 1)
        log.error(f"job {hc.job.num} failed: {err}")
        return None
    except Exception as err:
        return _job_failed(err, output_dir, multirun, job)
    finally:
        runs.release_run_dir(output_dir)
    return results.get("best_val_loss")  # what a sweeper (e.g. Optuna) minimises


@contextmanager
def out_of_memory_as_user_error() -> Iterator[None]:
    """A batch or model too large for the device's memory (CPU or GPU) is the config's, not a bug: one line
    with what to lower, recorded like any other failed job."""
    try:
        yield
    except (RuntimeError, MemoryError) as err:
        text = str(err)
        if not (type(err).__name__ == "OutOfMemoryError" or "can't allocate memory" in text):
            raise
        tried = re.search(r"tried to allocate ([\d.]+) ?(\w+)", text, flags=re.IGNORECASE)  # CPU: bytes
        size = tried and (
            f"{float(tried[1]) / 1e9:.1f} GB" if tried[2] == "bytes" else f"{tried[1]} {tried[2]}"
        )
        what = f"tried to allocate {size}" if tried else text.splitlines()[0][:120]
        raise UserError(
            f"out of memory ({what}); lower data.batch_size (trainer.accumulate_grad_batches=N keeps the "
            "batch per step), data.block_size or the model's size"
        ) from None


def _job_failed(err: Exception, output_dir: Path, multirun: bool, job: int | None) -> None:
    """A bug: a single run keeps its traceback; a sweep records the job as failed and goes on."""
    import logging
    import traceback

    if not multirun:
        raise err
    runs.record_failure(output_dir, f"{type(err).__name__}: {err}")
    logging.getLogger("tinytransformer").error(f"job {job} failed:\n{traceback.format_exc()}")


def _quiet_os_errors_in_threads(args) -> None:
    """A failed write in TensorBoard's writer thread reaches the run at its next write, which reports it in
    one line: no thread traceback before it. Any other thread's error keeps its traceback."""
    if not (issubclass(args.exc_type, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
        threading.__excepthook__(args)


def _write_failed(err: OSError, output_dir: Path, job: int | None, sweep_dir: Path) -> None:
    """A write failed (disk full, read-only, permissions): one line. A sweep job (`job` is its number) is
    recorded as failed, and the sweep goes on only if the next job can write."""
    import logging

    if err.filename is None:  # e.g. TensorBoard's writer, which does not say which file
        err.filename = str(output_dir)
    line = os_error_line(err)
    disk_full = err.errno in (errno.ENOSPC, errno.EDQUOT)  # the next job would fill it up again
    try:
        runs.record_failure(output_dir, line)
        if job is not None and not disk_full:
            runs.check_writable(sweep_dir)
            logging.getLogger("tinytransformer").error(f"job {job} failed: {line}")
            return
    except OSError:  # the next job could not write either
        pass
    if job is not None:
        line += f"; the sweep stopped at job {job}"
    print(f"error: {line}", file=sys.stderr)
    sys.exit(EXIT_OS_ERROR)
