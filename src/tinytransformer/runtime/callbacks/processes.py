"""Per-process settings: what every DDP rank needs (the processes Lightning spawned included), and what
each job of a sweep run in one process must find as the first job did."""

from __future__ import annotations

import logging
import logging.config
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch


def log_lightning_via_root() -> None:
    """Lightning's loggers print through the root's handlers (the run's console + train.log), once."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


def _drop_adverts(record: logging.LogRecord) -> bool:
    """Lightning prints product tips on every run; they are not about the user's run."""
    return "Tip:" not in str(record.msg)


def quiet_lightning_notices() -> None:
    """Leave out what Lightning prints that is not about the user's run, in this process (every rank's)."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_drop_adverts)
    # Lightning 2.6 calls a torch API that torch 2.13 deprecates, once per run.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # Under DDP, Lightning asks for sync_dist on every epoch-level value; these are the same on every rank
    # already (torchmetrics' compute() gathers all ranks' states, the best val loss follows from them, and
    # every rank clips the same averaged gradients).
    warnings.filterwarnings(
        "ignore", message=r"It is recommended to use `self\.log\('(val/|test/|train/clip_)"
    )
    # A resumed run's ModelCheckpoint finds its own earlier files in its dir, as it should.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


class ProcessSetup(L.Callback):
    """Sets each rank's torch thread count and gives a spawned rank 0 the run's log handlers.

    A process started by `ddp_spawn` begins bare: torch's default thread count (two such processes on a
    2-core machine slow each other 10-100x) and no log handlers (its samples and messages would be lost).
    """

    def __init__(self, threads: int | None = None, logging_config: dict[str, Any] | None = None):
        self.threads = threads
        # Hydra's resolved job_logging of this run (console + train.log), by default.
        self.logging_config = job_logging() if logging_config is None else logging_config

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        quiet_lightning_notices()  # a spawned process imported Lightning afresh
        if self.threads:
            torch.set_num_threads(self.threads)
        if trainer.is_global_zero and not logging.getLogger().handlers:  # a spawned process
            if self.logging_config:
                logging.config.dictConfig(self.logging_config)
            else:
                logging.basicConfig(level=logging.INFO, format="%(message)s")
            log_lightning_via_root()


def job_logging() -> dict | None:
    """Hydra's logging config of this run, for the processes ddp_spawn starts (None outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    config = HydraConfig.get().job_logging if HydraConfig.initialized() else None
    return None if config is None else OmegaConf.to_container(config, resolve=True)


@contextmanager
def isolated_job() -> Iterator[None]:
    """Restore what a job sets process-wide (threads, matmul precision, compiled graphs) when it ends:
    the basic launcher runs a sweep's jobs one after another in one process, each must start alike."""
    global _jobs_started
    _jobs_started += 1
    threads, matmul_precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(matmul_precision)
        if "torch._dynamo" in sys.modules:  # only a compiled job loaded it
            torch._dynamo.reset()


_jobs_started = 0


def job_start_time() -> float | None:
    """When this job started: the process's start for its first job (imports count, as a user waits for
    them), now for a sweep's later jobs in the same process."""
    return process_start_time() if _jobs_started <= 1 else time.time()


def process_start_time() -> float | None:
    """When this process started (seconds since the epoch), from /proc on Linux; None elsewhere."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        stat = Path("/proc/stat").read_text().splitlines()
        boot = next(float(line.split()[1]) for line in stat if line.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
