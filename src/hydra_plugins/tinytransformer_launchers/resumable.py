"""Which jobs a re-run of a sweep does not run again, and what the sweeper gets back for them."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig

from tinytransformer.runtime.runs import FAILED_FILE, FINISHED, METRICS


def register_launcher(name: str, node: type) -> None:
    """`hydra/launcher=<name>`, configured by the dataclass `node`."""
    ConfigStore.instance().store(group="hydra/launcher", name=name, node=node, provider="tinytransformer")


@dataclass
class SkippedJob(JobReturn):
    """A job its dir holds as finished (or failed, with skip_failed): not run again, its files untouched."""

    line: str = ""  # `job N: done before (<dir>), skipped`


def job_dir(sweep_config: DictConfig) -> Path:
    """hydra.sweep.dir/hydra.sweep.subdir, resolved as Hydra's run_job does (with the job's HydraConfig)."""
    hydra_config = HydraConfig.instance()
    saved = hydra_config.cfg
    hydra_config.set_config(sweep_config)
    try:
        sweep = sweep_config.hydra.sweep
        return Path(os.path.abspath(os.path.join(str(sweep.dir), str(sweep.subdir))))
    finally:
        hydra_config.cfg = saved


def skipped_job(sweep_config: DictConfig, skip_failed: bool) -> SkippedJob | None:
    """The result of a job done before, as `_hydra_train` returned it (its best val loss; None for a failed
    job), or None: the job runs (again). Must be decided before run_job, which rewrites .hydra/ and the log."""
    run_dir = job_dir(sweep_config)
    if (run_dir / FAILED_FILE).is_file():
        if not skip_failed:
            return None
        value, state = None, "failed before"
    else:
        metrics = read_json(run_dir / METRICS)
        if metrics.get("status") != FINISHED:  # running when killed, interrupted, or never started
            return None
        value, state = metrics.get("best_val_loss"), "done before"
    job = SkippedJob(
        overrides=list(sweep_config.hydra.overrides.task),
        task_name=sweep_config.hydra.job.name,
        status=JobStatus.COMPLETED,
        line=f"job {sweep_config.hydra.job.num}: {state} ({run_dir}), skipped",
    )
    job.return_value = value
    return job


def read_json(path: Path) -> dict:
    """A run dir's json file; {} for none yet, or an unreadable one (its job runs again)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
