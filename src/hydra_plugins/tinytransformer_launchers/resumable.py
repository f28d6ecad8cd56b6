"""Which jobs a re-run of a sweep does not run again, and what the sweeper gets back for them."""

import copy
import functools
import json
import os
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import yaml
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, open_dict, read_write

from tinytransformer.comparison.records import run_identity
from tinytransformer.runtime.runs import FAILED_FILE, FINISHED, METRICS, is_locked


def register_launcher(name: str, node: type) -> None:
    """`hydra/launcher=<name>`, configured by the dataclass `node`."""
    ConfigStore.instance().store(group="hydra/launcher", name=name, node=node, provider="tinytransformer")


@dataclass
class SkippedJob(JobReturn):
    """A job its dir holds as finished (or failed, with skip_failed): not run again, its files untouched."""

    line: str = ""  # `job N: done before (<dir>), skipped`


class _Composed(dict):
    """A sweep's composed job configs, by overrides; pickled empty (a launcher or its context may be sent
    to another process)."""

    def __reduce__(self):
        return _Composed, ()


def compose_once(hydra_context) -> None:
    """Each job of a sweep is composed twice: the sweeper checks that every job of a batch composes before
    any runs (Hydra's validate_batch_is_legal), then the launcher composes it to run it, ~0.2 s each here.
    The same master config and overrides compose the same config: the launcher takes a copy of the
    check's. Done in a launcher's setup, on the config loader the sweeper shares."""
    loader = hydra_context.config_loader
    if "load_sweep_config" not in vars(loader):
        loader.load_sweep_config = functools.partial(
            _load_sweep_config, type(loader).load_sweep_config, loader, _Composed()
        )


def _load_sweep_config(load, loader, composed: _Composed, master_config, sweep_overrides) -> DictConfig:
    key = tuple(sweep_overrides)
    master, config = composed.pop(key, (None, None))
    if master is not master_config:  # not checked before (a later batch, or an Optuna trial)
        config = load(loader, master_config, list(sweep_overrides))
        if len(composed) >= 1024:  # a grid larger than that is checked whole before it runs
            composed.pop(next(iter(composed)))
        composed[key] = (master_config, config)  # for the launcher, which composes it next
    return copy.deepcopy(config)


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


def job_config(launcher, overrides: Sequence[str], idx: int, job_id: str | int | None = None) -> DictConfig:
    """Job `idx`'s config, as Hydra's launchers compose it, in the dir of its run: the job dir of this sweep
    that ran its setting and seed, whatever its number and name, else a new one. A re-run may number and
    name its jobs otherwise than the run before: a seed sweep whose failed job succeeds this time plans other
    rounds, a value added to a grid shifts the numbers after it, a key newly swept renames every job. And a
    job's name may be another run's (a fixed key changed, a swept key narrowed to a new value): it gets a
    dir beside that one (`0_dropout=0~2`), whose results are never taken for its own. A dir given to another
    job of this launcher (this invocation, in its process) is never given again: jobs whose overrides differ
    only where the identity looks away (paths.cache_dir), or Optuna trials that drew the same point, each
    keep their own dir and failed.json."""
    sweep_config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = idx if job_id is None else job_id
        sweep_config.hydra.job.num = idx
    given: set[Path] = vars(launcher).setdefault("given_dirs", set())  # to this invocation's jobs
    run_dir, identity = job_dir(sweep_config), run_identity(overrides)
    ran, subdir = ran_with(run_dir), None
    if ran != identity:  # its own dir is new, empty, or another run's
        subdir = earlier_dir(run_dir.parent, identity, given)
        if subdir is None and ran is not None:  # the first sibling that is new, empty or its own
            names = (run_dir.with_name(f"{run_dir.name}~{k}") for k in count(2))
            subdir = next(d for d in names if ran_with(d) in (None, identity) and d not in given)
        if subdir is not None:
            with read_write(sweep_config.hydra), open_dict(sweep_config.hydra):
                sweep_config.hydra.sweep.subdir = subdir.name  # job dirs are the sweep dir's children
    given.add(subdir or run_dir)
    return sweep_config


def earlier_dir(sweep_dir: Path, identity: frozenset[str], given: Collection[Path] = ()) -> Path | None:
    """The job dir an earlier run of this sweep gave the same setting and seed, that no process holds and
    that is not in `given` (dirs given to jobs of this launch): a finished one first, then the lowest job
    number."""
    if not sweep_dir.is_dir():
        return None
    found = [d for d in sweep_dir.iterdir() if d.is_dir() and d not in given and ran_with(d) == identity]
    found = [d for d in found if not is_locked(d)]

    def rank(run_dir: Path) -> tuple[bool, int, str]:
        number = run_dir.name.partition("_")[0]
        finished = read_json(run_dir / METRICS).get("status") == FINISHED
        return not finished, int(number) if number.isdigit() else sys.maxsize, run_dir.name

    return min(found, key=rank, default=None)


def ran_with(run_dir: Path) -> frozenset[str] | None:
    """run_identity of a run dir's overrides; None before Hydra wrote them. Read once per version of the file:
    every job of a sweep looks through the sweep dir."""
    try:
        written = (run_dir / ".hydra" / "overrides.yaml").stat().st_mtime_ns
    except OSError:
        return None
    return _ran_with(str(run_dir), written)


@functools.lru_cache(maxsize=4096)
def _ran_with(run_dir: str, written: int) -> frozenset[str] | None:
    try:
        return run_identity(yaml.safe_load((Path(run_dir) / ".hydra" / "overrides.yaml").read_text()))
    except (OSError, TypeError, yaml.YAMLError):
        return None


def skipped_job(sweep_config: DictConfig, skip_failed: bool) -> SkippedJob | None:
    """The result of a job done before, as `train_job` (runtime/job.py) returned it (its best val loss; None for a failed
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
