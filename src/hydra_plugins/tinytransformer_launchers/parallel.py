"""`hydra/launcher=resumable_parallel` (the default): a sweep's jobs several at a time on this machine.

- Jobs run in worker processes, one after another in each, as resumable_basic runs them in the sweep's own
  process: torch and Lightning are imported once per worker, not per job. Workers x threads are fitted to
  the cores this process may use (affinity and cgroup quota; 2 x 1 on 2 cores); a user's
  `trainer.threads_per_process` sets the threads and `hydra.launcher.processes` the workers. Jobs on a GPU,
  or jobs that are DDP runs themselves, run one at a time.
- A job's numbers depend on its threads, never on what runs beside it or before it in its worker.
- Each job's output goes to its run dir's train.log; the terminal gets a line as a job starts and ends.
- Ctrl-C (SIGINT or SIGTERM to this process) is passed to every running job: each saves last.ckpt and stops,
  and no further job starts. A killed sweep's jobs get SIGTERM. Run again, the sweep skips the finished jobs
  and resumes the others, as with resumable_basic.

Jobs are Hydra's own (run_job on the job's composed config): the sweep pickles what run_job needs with
cloudpickle, as hydra-submitit-launcher does, and a worker process runs it (workers.py)."""

import atexit
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hydra.core.utils import JobReturn, configure_log, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, open_dict, read_write

from hydra_plugins.tinytransformer_launchers.resumable import (
    compose_once,
    job_config,
    job_dir,
    register_launcher,
    skipped_job,
)
from hydra_plugins.tinytransformer_launchers.workers import Job, Worker
from tinytransformer.errors import UserError, exit_on_user_error

log = logging.getLogger(__name__)


@dataclass
class ResumableParallelLauncherConf:
    _target_: str = "hydra_plugins.tinytransformer_launchers.parallel.ResumableParallelLauncher"
    processes: Optional[int] = None  # noqa: UP045 (OmegaConf reads Optional). None: fitted to the cores
    skip_failed: bool = False  # true: a job whose dir has failed.json is not run again either


register_launcher("resumable_parallel", ResumableParallelLauncherConf)


class ResumableParallelLauncher(Launcher):
    def __init__(self, processes: Optional[int] = None, skip_failed: bool = False) -> None:  # noqa: UP045
        self.processes, self.skip_failed = processes, skip_failed
        self.workers: list[Worker | None] = []  # kept for the sweep's next launch (an Optuna trial, a round)
        atexit.register(self._close_workers)

    def _close_workers(self) -> None:
        for worker in [w for w in self.workers if w]:
            worker.close()

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config
        compose_once(hydra_context)

    @exit_on_user_error
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        processes, self.threads = fit_processes(self.config, self.processes, len(job_overrides))
        each = f"{self.threads} thread{'s' if self.threads > 1 else ''} each"
        log.info(f"Launching {len(job_overrides)} jobs, {processes} at a time, {each}")
        pending = list(enumerate(job_overrides, start=initial_job_idx))
        self.workers += [None] * (processes - len(self.workers))  # a worker starts with its slot's first job
        slots = self.workers[:processes]
        returns: dict[int, JobReturn] = {}
        stop, fatal = _StopRequest(), None
        with stop:
            while (pending and not (stop.signal or fatal)) or any(w and w.job for w in slots):
                for i, worker in enumerate(slots):
                    if (worker and worker.job) or stop.signal or fatal:
                        continue
                    if job := self._next_job(pending, returns):
                        if worker is None or not worker.alive():
                            slots[i] = self.workers[i] = worker = Worker(self.threads)
                        worker.start(job)
                for worker in [w for w in slots if w and w.job]:
                    if stop.signal or fatal:  # every running job saves last.ckpt and stops
                        worker.forward(stop.signal or signal.SIGTERM)
                    if (code := worker.ended()) is not None:
                        job = worker.job
                        returns[job.idx] = worker.finish(code)
                        if code != 0 and not worker.forwarded:  # e.g. a full disk: the sweep stops
                            fatal = fatal or job
                time.sleep(0.05)
        if fatal:
            code = fatal.code
            print(
                fatal.error or f"error: job {fatal.idx} exited with code {code}; see its train.log",
                file=sys.stderr,
            )
            sys.exit(code if code > 0 else 128 - code)  # -N: killed by signal N
        if stop.signal:
            log.warning(f"stopped by {signal.Signals(stop.signal).name}: {len(pending)} jobs not started")
            sys.exit(128 + stop.signal)
        return [returns[idx] for idx in sorted(returns)]

    def _next_job(self, pending: list, returns: dict[int, JobReturn]) -> "Job | None":
        """The next job to run; those done before are skipped on the way, their results kept."""
        while pending:
            idx, overrides = pending.pop(0)
            sweep_config = job_config(self, overrides, idx)
            with open_dict(sweep_config):
                if sweep_config.trainer.get("threads_per_process") is None:  # a job's own (swept) stays
                    sweep_config.trainer.threads_per_process = self.threads
            skipped = skipped_job(sweep_config, self.skip_failed)
            if skipped:
                log.info(skipped.line)
                returns[idx] = skipped
                continue
            with read_write(sweep_config.hydra), open_dict(sweep_config.hydra):
                sweep_config.hydra.job_logging.root.handlers = ["file"]  # the console goes to train.log too
            context = (self.hydra_context, self.task_function)
            return Job(idx, list(overrides), sweep_config, context, job_dir(sweep_config))
        return None


def fit_processes(config: DictConfig, processes: Optional[int], jobs: int) -> tuple[int, int]:  # noqa: UP045
    """(processes, threads per process) for `jobs` jobs on the cores this process may use; a UserError where
    the user's values do not fit."""
    from tinytransformer.runtime.flops import available_cpus
    from tinytransformer.runtime.precision import on_gpu

    cores = available_cpus()
    threads = config.trainer.get("threads_per_process")
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():  # the user's threads per process
        threads = min(max(1, int(os.environ["OMP_NUM_THREADS"])), cores)
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
