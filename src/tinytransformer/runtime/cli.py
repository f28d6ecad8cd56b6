"""Command-line entry points: Hydra `key=value` overrides in, one summary (or one error line) out.

Before Hydra creates a run dir, every override is composed and validated here ("pre-flight"), so a typo
or an out-of-range value costs one line and exit code 2, and never leaves a run dir or touches an old one.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from tinytransformer.errors import EXIT_OS_ERROR, EXIT_USER_ERROR, UserError, os_error_line
from tinytransformer.files import LAST
from tinytransformer.runtime import launch, runs, sweeps
from tinytransformer.runtime.config import CONFIG_DIR, ROOT, register_schemas
from tinytransformer.runtime.overrides import compose_config, override_value, parse_args


def register_resolvers() -> None:
    """`${sweep_job_name:}` in conf/hydra/default.yaml: sweep jobs named by what differs between them."""
    from omegaconf import OmegaConf

    def sweep_job_name(*, _root_) -> str:
        return sweeps.job_name(_root_.hydra, CONFIG_DIR)

    OmegaConf.register_new_resolver("sweep_job_name", sweep_job_name, replace=True)


# At import: a sweep job may run in a process that only unpickles the task function (submitit).
register_resolvers()
register_schemas()


def project_env() -> None:
    """Paths in conf/ are absolute, under PROJECT_ROOT (the repo by default), never the working dir."""
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def fail(message: str, exit_code: int = EXIT_USER_ERROR) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(exit_code)


def claim_output_dir(cfg, multirun: bool) -> None:
    """Make the run dir (locked: one writer) or the sweep dir (checked writable) before Hydra does, so a
    read-only or full disk, a run dir in use, or a sweep dir another version wrote costs one line."""
    if multirun:
        runs.check_sweep_layout(Path(cfg.hydra.sweep.dir))
        runs.check_writable(Path(cfg.hydra.sweep.dir))
    else:
        runs.lock_run_dir(cfg.hydra.run.dir)


def preflight(config_dir: Path, config_name: str, overrides: list[str], multirun: bool):
    """Compose (first value of each sweep) and validate; returns the composed config with `hydra`."""
    cfg = compose_config(config_dir, config_name, overrides, with_hydra=True)
    if not multirun:
        from tinytransformer.runtime.preflight import check

        check(cfg)  # values first (a typo costs no torch import), then every class and its arguments
    return cfg


def train_main() -> None:
    """`python scripts/train.py [key=value ...]`, `-m` for sweeps, `resume=<run dir>` to continue a run."""
    project_env()
    argv = sys.argv[1:]
    if launch.relaunched_by_lightning():  # a DDP rank > 0: Lightning completed its command line
        sys.argv = [sys.argv[0], *argv, *launch.QUIET_RANK_OVERRIDES]
        hydra_train()
        return
    config_dir, config_name, extra, cfg = CONFIG_DIR, "train", [], None
    try:
        overrides, multirun, hydra_flag = parse_args(argv)
        resume = override_value(overrides, "resume")
        if resume:
            run_dir = runs.check_resumable(resume, multirun)
            runs.check_resume_overrides(overrides, CONFIG_DIR)
            if launch.is_rank_zero():  # before Hydra writes its .hydra/resume-<time>/ there
                runs.lock_run_dir(run_dir)
            config_dir, config_name = runs.run_config_dir(run_dir), "config"
            extra = runs.resume_overrides(run_dir, CONFIG_DIR)
        if not hydra_flag:
            cfg = preflight(config_dir, config_name, overrides + extra, multirun)
            multirun = multirun or str(cfg.hydra.get("mode")).endswith("MULTIRUN")  # a sweep set by a config
            launch.check_launch(cfg, multirun)
            if not multirun and not resume and launch.is_rank_zero():
                runs.refuse_existing_run(cfg.hydra.run.dir)
            if launch.under_torchrun():  # one run dir for all ranks, written by rank 0
                extra += launch.torchrun_overrides(cfg, overrides + extra)
            else:  # Hydra would compose `${now:...}` again: keep the dir that was checked here
                extra += runs.pinned_dirs(cfg, overrides + extra)
            if launch.is_rank_zero():
                claim_output_dir(cfg, multirun)
    except UserError as err:
        fail(str(err), err.exit_code)
    except OSError as err:
        fail(os_error_line(err), EXIT_OS_ERROR)
    config = [f"--config-path={config_dir}", f"--config-name={config_name}"]
    if hydra_flag:
        sys.argv = [sys.argv[0], *argv, *extra, *config]
    else:  # flags first: Lightning's ddp appends overrides when it re-runs this command for other ranks
        flags = [a for a in argv if a.startswith("-")]
        sys.argv = [sys.argv[0], *flags, *config, *overrides, *extra]
    hydra_train(cfg)


def compose_cli(config_name: str, argv: list[str]):
    """Compose conf/<config_name>.yaml with command-line overrides, without Hydra's run dir or logging."""
    overrides, multirun, hydra_flag = parse_args(argv)
    if multirun or hydra_flag:
        raise UserError(f"{config_name}.py takes key=value overrides only (no -m or Hydra flags)")
    cfg = compose_config(CONFIG_DIR, config_name, overrides, with_hydra=False)
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"{missing[0]}: required; pass {missing[0]}=<value> (e.g. a run dir)")
    return cfg


def run_checkpoint_command(config_name: str, command):
    """`command(cfg)` for conf/<config_name>.yaml and the command line's overrides; a user error or an
    OS error (e.g. the token cache of the data it evaluates on) ends the process in one line."""
    project_env()
    try:
        return command(compose_cli(config_name, sys.argv[1:]))
    except UserError as err:
        fail(str(err), err.exit_code)
    except OSError as err:
        fail(os_error_line(err), EXIT_OS_ERROR)


def generate_main() -> None:
    """`python scripts/generate.py ckpt_path=<run dir or .ckpt> prompt="The cat" max_new_tokens=200`."""
    from tinytransformer.runtime.inference import generate_samples

    samples = run_checkpoint_command("generate", generate_samples)
    for i, text in enumerate(samples):
        if len(samples) > 1:
            print(f"--- sample {i + 1} ---")
        print(text)


def evaluate_main() -> None:
    """`python scripts/evaluate.py ckpt_path=<run dir or .ckpt>`: prints one line per metric, as JSON too."""
    import json

    from tinytransformer.runtime.inference import evaluate_checkpoint

    print(json.dumps(run_checkpoint_command("evaluate", evaluate_checkpoint), indent=2))


def _hydra_train(cfg) -> float | None:
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


def hydra_train(preflight_cfg=None) -> None:
    """Hydra's main on sys.argv; `preflight_cfg`: the config preflight composed from the same overrides."""
    import hydra

    with known_mode(preflight_cfg):
        hydra.main(version_base="1.3", config_path=None, config_name=None)(_hydra_train)()


@contextmanager
def known_mode(preflight_cfg) -> Iterator[None]:
    """Hydra's main composes the whole config once more only to read hydra.mode (Hydra.get_mode, ~0.2 s,
    as long as a tiny run's training): preflight has composed the same overrides, so Hydra is told its
    value. hydra.mode comes from the configs alone (experiment=regularization sets MULTIRUN)."""
    from hydra._internal.hydra import Hydra

    if preflight_cfg is None:  # a Hydra flag (--cfg, ...), or a DDP rank Lightning started
        yield
        return
    get_mode, mode = Hydra.get_mode, preflight_cfg.hydra.get("mode")
    Hydra.get_mode = lambda self, config_name, overrides: mode
    try:
        yield
    finally:
        Hydra.get_mode = get_mode
