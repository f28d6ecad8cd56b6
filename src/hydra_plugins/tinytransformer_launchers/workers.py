"""The worker processes of `hydra/launcher=resumable_parallel` (parallel.py): each runs a sweep's jobs one
after another, as resumable_basic runs them in the sweep's own process, so torch and Lightning are imported
once per worker. `python -m hydra_plugins.tinytransformer_launchers.workers` is a worker (`_serve`)."""

import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals
from omegaconf import DictConfig

from hydra_plugins.tinytransformer_launchers.resumable import job_dir, read_json
from tinytransformer.runtime.runs import FAILED_FILE, METRICS, checkpoint_to_continue

log = logging.getLogger("hydra_plugins.tinytransformer_launchers.parallel")  # the sweep's own lines


@dataclass
class Job:
    idx: int
    overrides: list[str]
    sweep_config: DictConfig
    context: tuple  # (hydra_context, task_function)
    dir: Path  # its run dir
    spec: str = ""  # the file of its pickled run_job arguments
    error: str | None = None  # the last `error:` line it wrote
    code: int | None = None  # how it ended: 0, or its process's exit code


class Worker:
    """A process that runs jobs one after another, as resumable_basic does in the sweep's own process: torch
    and Lightning are imported once per slot, not once per job.

    It reads a job (the path of its pickled run_job arguments) per line on stdin. A job's stdout goes to its
    train.log; its stderr too, through this process, which keeps its last `error:` line for the terminal. The
    worker marks the end of each job on stderr, and exits when a job exits (interrupted, a full disk)."""

    def __init__(self, threads: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=os.environ | {"OMP_NUM_THREADS": str(threads)},
            start_new_session=True,  # a Ctrl-C in the terminal reaches the sweep only, which passes it on
            preexec_fn=_term_with_parent,
        )
        self.job: Job | None = None
        self.forwarded, self._done = False, threading.Event()
        threading.Thread(target=self._copy_stderr, daemon=True).start()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def start(self, job: Job) -> None:
        import cloudpickle

        job.dir.mkdir(parents=True, exist_ok=True)
        last = checkpoint_to_continue(job.dir)
        fd, job.spec = tempfile.mkstemp(prefix=f"tinytransformer-job-{job.idx}-", suffix=".pkl")
        with os.fdopen(fd, "wb") as file:
            cloudpickle.dump((*job.context, job.sweep_config, Singleton.get_state()), file)
        self.job, self.forwarded = job, False
        self._done.clear()
        self.proc.stdin.write(f"{job.spec}\n".encode())
        self.proc.stdin.flush()
        where = f"continuing {job.dir} from {last}" if last else f"started in {job.dir}"
        log.info(f"job {job.idx}: {where}, output in its train.log")

    def _copy_stderr(self) -> None:
        for line in self.proc.stderr:
            job = self.job
            if line == _DONE:
                self._done.set()
            elif job is not None:
                if line.startswith(b"error: "):
                    job.error = line.decode(errors="replace").strip()
                try:
                    with (job.dir / "train.log").open("ab") as log_file:
                        log_file.write(line)
                except OSError:  # a full disk: the line is kept for the terminal all the same
                    pass
        self._done.set()  # the worker exited

    def forward(self, signum: int) -> None:
        if not self.forwarded and self.alive():
            self.proc.send_signal(signum)
            self.forwarded = True

    def ended(self) -> int | None:
        """The running job's exit code once it has ended (0 when the worker goes on), else None."""
        if not self._done.is_set():
            return None
        return 0 if self.alive() else self.proc.wait()

    def finish(self, code: int) -> JobReturn:
        """The job's result as `train_job` (runtime/job.py) returned it (its best val loss, None for a failed job), read
        from its run dir; its line for the terminal."""
        job, self.job = self.job, None
        job.code = code
        Path(job.spec).unlink(missing_ok=True)  # the worker removes it once read; not if it died first
        failed = read_json(job.dir / FAILED_FILE).get("reason")
        value = read_json(job.dir / METRICS).get("best_val_loss") if code == 0 and not failed else None
        if code != 0:
            line = f"job {job.idx}: stopped (exit code {code})"
            line += "; the sweep's command again resumes it" if self.forwarded else ""
        elif failed:
            line = f"job {job.idx} failed: {failed.splitlines()[0]}"
        else:
            line = f"job {job.idx}: finished, best val loss {value:.4f}"
        log.info(line)
        ret = JobReturn(overrides=job.overrides, status=JobStatus.COMPLETED)
        ret.return_value = value
        return ret

    def close(self) -> None:
        """No more jobs: the worker ends (at once where it is idle; a stopped job's worker has ended)."""
        if self.alive():
            self.proc.stdin.close()
        self.proc.wait()


def _term_with_parent() -> None:
    """In the child, before exec: SIGTERM when the sweep process dies (killed, it cannot pass a signal on)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_DONE = b"\x00job done\n"  # the worker's mark on stderr after each job


def _serve() -> None:
    """The worker: run each job it is given, as Hydra's basic launcher does, with its stdout in its
    train.log; a job that exits (interrupted, a full disk) ends the worker with its exit code."""
    import cloudpickle

    for line in sys.stdin:
        with open(line.strip(), "rb") as file:
            hydra_context, task_function, sweep_config, singleton_state = cloudpickle.load(file)
        os.unlink(line.strip())
        setup_globals()
        Singleton.set_state(singleton_state)
        HydraConfig.instance().set_config(sweep_config)
        sys.stdout.flush()
        with (job_dir(sweep_config) / "train.log").open("ab") as out:
            os.dup2(out.fileno(), sys.stdout.fileno())
        ret = run_job(
            hydra_context=hydra_context,
            task_function=task_function,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        if ret.status == JobStatus.FAILED:  # not a failed job (that is recorded) but a bug: its traceback
            raise ret._return_value
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stderr.buffer.write(_DONE)
        sys.stderr.buffer.flush()


if __name__ == "__main__":
    _serve()
