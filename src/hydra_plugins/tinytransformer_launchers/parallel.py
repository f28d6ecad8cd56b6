"""`hydra/launcher=resumable_parallel` (the default): a sweep's jobs several at a time on this machine.

- Each job runs in a process of its own, with `trainer.threads_per_process` torch threads. Processes x
  threads are fitted to the cores this process may use (affinity and cgroup quota; 2 x 1 on 2 cores); a
  user's `threads_per_process` sets the threads and `hydra.launcher.processes` the processes. Jobs on a GPU,
  or jobs that are DDP runs themselves, run one at a time.
- A job's numbers depend on its threads, never on what runs beside it.
- Each job's output goes to its run dir's train.log; the terminal gets a line as a job starts and ends.
- Ctrl-C (SIGINT or SIGTERM to this process) is passed to every running job: each saves last.ckpt and stops,
  and no further job starts. A killed sweep's jobs get SIGTERM. Run again, the sweep skips the finished jobs
  and resumes the others, as with resumable_basic.

Jobs are Hydra's own (run_job on the job's composed config), in a fresh interpreter: the parent pickles what
run_job needs with cloudpickle, as hydra-submitit-launcher does.
"""

import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, open_dict, read_write

from hydra_plugins.tinytransformer_launchers.resumable import job_dir, read_json, skipped_job
from tinytransformer.errors import UserError, exit_on_user_error
from tinytransformer.runtime.runs import FAILED_FILE, METRICS, checkpoint_to_continue

log = logging.getLogger(__name__)


@dataclass
class ResumableParallelLauncherConf:
    _target_: str = "hydra_plugins.tinytransformer_launchers.parallel.ResumableParallelLauncher"
    processes: Optional[int] = None  # noqa: UP045 (OmegaConf reads Optional). None: fitted to the cores
    skip_failed: bool = False  # true: a job whose dir has failed.json is not run again either


ConfigStore.instance().store(
    group="hydra/launcher",
    name="resumable_parallel",
    node=ResumableParallelLauncherConf,
    provider="tinytransformer",
)


class ResumableParallelLauncher(Launcher):
    def __init__(self, processes: Optional[int] = None, skip_failed: bool = False) -> None:  # noqa: UP045
        self.processes, self.skip_failed = processes, skip_failed

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    @exit_on_user_error
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        processes, threads = fit_processes(self.config, self.processes, len(job_overrides))
        each = f"{threads} thread{'s' if threads > 1 else ''} each"
        log.info(f"Launching {len(job_overrides)} jobs, {processes} at a time, {each}")
        pending = list(enumerate(job_overrides, start=initial_job_idx))
        running: dict[int, _Job] = {}
        returns: dict[int, JobReturn] = {}
        stop, fatal = _StopRequest(), None
        with stop:
            while (pending and not (stop.signal or fatal)) or running:
                while pending and len(running) < processes and not (stop.signal or fatal):
                    idx, overrides = pending.pop(0)
                    job = self._start(idx, list(overrides), threads)
                    if isinstance(job, JobReturn):  # done before: skipped
                        returns[idx] = job
                    else:
                        running[idx] = job
                if stop.signal or fatal:  # every running job saves last.ckpt and stops
                    for job in running.values():
                        job.forward(stop.signal or signal.SIGTERM)
                for idx in [i for i, job in running.items() if job.proc.poll() is not None]:
                    job = running.pop(idx)
                    returns[idx] = job.finish()
                    if job.proc.returncode != 0 and not job.forwarded:  # e.g. a full disk: the sweep stops
                        fatal = fatal or job
                time.sleep(0.05)
        if fatal:
            code = fatal.proc.returncode
            print(
                fatal.error or f"error: job {fatal.idx} exited with code {code}; see its train.log",
                file=sys.stderr,
            )
            sys.exit(code if code > 0 else 128 - code)  # -N: killed by signal N
        if stop.signal:
            log.warning(f"stopped by {signal.Signals(stop.signal).name}: {len(pending)} jobs not started")
            sys.exit(128 + stop.signal)
        return [returns[idx] for idx in sorted(returns)]

    def _start(self, idx: int, overrides: list[str], threads: int) -> "_Job | JobReturn":
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
            threads = sweep_config.trainer.get("threads_per_process") or threads  # a job's own, if swept
            sweep_config.trainer.threads_per_process = threads
        skipped = skipped_job(sweep_config, self.skip_failed)
        if skipped:
            log.info(skipped.line)
            return skipped
        with read_write(sweep_config.hydra), open_dict(sweep_config.hydra):
            sweep_config.hydra.job_logging.root.handlers = ["file"]  # the console goes to train.log too
        return _Job(idx, overrides, sweep_config, threads, (self.hydra_context, self.task_function))


def fit_processes(config: DictConfig, processes: Optional[int], jobs: int) -> tuple[int, int]:  # noqa: UP045
    """(processes, threads per process) for `jobs` jobs on the cores this process may use; a UserError where
    the user's values do not fit."""
    from tinytransformer.runtime.flops import available_cpus
    from tinytransformer.runtime.precision import on_gpu

    cores = available_cpus()
    threads = config.trainer.get("threads_per_process")
    if threads is not None and threads > cores:
        raise UserError(
            f"trainer.threads_per_process={threads}: more than the {cores} cores this sweep may use; "
            f"use at most {cores}"
        )
    single = on_gpu(config.trainer.accelerator) or "ddp" in str(config.trainer.get("strategy", ""))
    if single:  # a GPU job, or a DDP run, uses the machine by itself
        processes = 1
    elif processes is None:
        processes = max(1, min(jobs, cores // (threads or 1)))
    if threads is None:
        threads = max(1, cores // processes)
    if processes * threads > cores and not single:
        raise UserError(
            f"hydra.launcher.processes={processes} x trainer.threads_per_process={threads}: more than the "
            f"{cores} cores this sweep may use; lower either"
        )
    return processes, threads


class _Job:
    """A job in its own interpreter. Its stdout goes to its run dir's train.log; its stderr too, through this
    process, which keeps the last `error:` line for the terminal."""

    def __init__(self, idx: int, overrides: list[str], sweep_config: DictConfig, threads: int, context):
        import cloudpickle

        self.idx, self.overrides, self.dir = idx, overrides, job_dir(sweep_config)
        self.dir.mkdir(parents=True, exist_ok=True)
        last = checkpoint_to_continue(self.dir)
        fd, self.spec = tempfile.mkstemp(
            prefix=f"tinytransformer-job-{idx}-", suffix=".pkl"
        )  # outside the run
        with os.fdopen(fd, "wb") as file:
            cloudpickle.dump((*context, sweep_config, Singleton.get_state()), file)
        env = os.environ | {"OMP_NUM_THREADS": str(threads)}
        with (self.dir / "train.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", __name__, self.spec],
                stdout=out,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the sweep only, which passes it on
                preexec_fn=_term_with_parent,
            )
        self.error: str | None = None
        self._stderr = threading.Thread(target=self._copy_stderr, daemon=True)
        self._stderr.start()
        self.forwarded = False
        where = f"continuing {self.dir} from {last}" if last else f"started in {self.dir}"
        log.info(f"job {idx}: {where}, output in its train.log")

    def _copy_stderr(self) -> None:
        with (self.dir / "train.log").open("ab") as log_file:
            for line in self.proc.stderr:
                if line.startswith(b"error: "):
                    self.error = line.decode(errors="replace").strip()
                try:
                    log_file.write(line)
                    log_file.flush()
                except OSError:  # a full disk: the line is kept for the terminal all the same
                    pass

    def forward(self, signum: int) -> None:
        if not self.forwarded and self.proc.poll() is None:
            self.proc.send_signal(signum)
            self.forwarded = True

    def finish(self) -> JobReturn:
        """The job's result as `_hydra_train` returned it (its best val loss, None for a failed job), read
        from its run dir; its line for the terminal."""
        self._stderr.join()
        Path(self.spec).unlink(missing_ok=True)  # the job removes it once read; not if it died first
        code = self.proc.returncode
        failed = read_json(self.dir / FAILED_FILE).get("reason")
        value = read_json(self.dir / METRICS).get("best_val_loss") if code == 0 and not failed else None
        if code != 0:
            line = f"job {self.idx}: stopped (exit code {code})"
            line += "; the sweep's command again resumes it" if self.forwarded else ""
        elif failed:
            line = f"job {self.idx} failed: {failed.splitlines()[0]}"
        else:
            line = f"job {self.idx}: finished, best val loss {value:.4f}"
        log.info(line)
        job = JobReturn(overrides=self.overrides, status=JobStatus.COMPLETED)
        job.return_value = value
        return job


class _StopRequest:
    """SIGINT and SIGTERM to the sweep are recorded, to be passed on to the running jobs."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __enter__(self) -> "_StopRequest":
        self._previous = {s: signal.signal(s, self._record) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _record(self, signum: int, frame) -> None:
        self.signal = self.signal or signum


def _term_with_parent() -> None:
    """In the child, before exec: SIGTERM when the sweep process dies (killed, it cannot pass a signal on)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _run_pickled_job(spec: str) -> None:
    """The child: run the job as Hydra's basic launcher does; its exit code says how it ended."""
    import cloudpickle

    with open(spec, "rb") as file:
        hydra_context, task_function, sweep_config, singleton_state = cloudpickle.load(file)
    os.unlink(spec)
    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(sweep_config)
    ret = run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=sweep_config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    if ret.status == JobStatus.FAILED:  # not a failed job (that is recorded) but a bug: its traceback
        raise ret._return_value


if __name__ == "__main__":
    _run_pickled_job(sys.argv[1])
