"""Run dirs read back: each one's setting and seed (its overrides), its results, and its state."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tinytransformer.runtime.runs import (
    FAILED,
    FAILED_FILE,
    FINISHED,
    INTERRUPTED,
    METRICS,
    RUNNING,
    is_locked,
    lock_holder,
)

KILLED = "killed"  # not finished, and no process holds the run dir: resume it
# Keys that say where a run was written, not what it trained: they never make a setting.
_PATH_KEYS = ("paths.", "hydra.", "resume")


@dataclass
class RunRecord:
    """One run dir: its setting, its seed, its results (metrics) or why it has none (failure), its state."""

    name: str
    dir: Path
    setting: tuple[str, ...]
    seed: str | None
    metrics: dict[str, Any] | None
    failure: str | None
    status: str = FINISHED  # runs.FINISHED | RUNNING | INTERRUPTED | FAILED, or KILLED
    duplicate_of: str | None = None  # an earlier run of the same setting and seed (counted once)

    @property
    def finished(self) -> bool:
        """Ran to its end, validated at its last step: it belongs in the table."""
        best = (self.metrics or {}).get("best_val_loss")
        return self.status == FINISHED and best is not None and math.isfinite(best)

    def state_line(self) -> str:
        """Why the run is not in the table, in one line."""
        step = (self.metrics or {}).get("final_val_step") or (self.metrics or {}).get("best_step")
        results = f"its last validation was at step {step}" if step is not None else "no validation yet"
        resume = f"resume with: python scripts/train.py resume={self.dir}"
        if self.status == FAILED:
            return f"failed: {self.failure}"
        if self.status == RUNNING:
            return f"running ({results}; held by {lock_holder(self.dir)})"
        if self.status == INTERRUPTED:
            return f"stopped by {(self.metrics or {}).get('stop_reason')} ({results}); {resume}"
        return f"killed: no process holds it and it did not finish ({results}); {resume}"


def split_overrides(overrides: list[str]) -> tuple[tuple[str, ...], str | None]:
    """(setting, seed) of a run's Hydra overrides; the seed and path-like keys are not part of a setting."""
    setting, seed = [], None
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key == "seed":
            seed = value
        elif not key.startswith(_PATH_KEYS):
            setting.append(override)
    return tuple(sorted(setting)), seed


def run_identity(overrides: list[str]) -> frozenset[str]:
    """What a run's overrides train, its setting and seed (`seed=<n>`), as one set: not where it was written."""
    setting, seed = split_overrides(list(overrides))
    return frozenset(setting) | ({f"seed={seed}"} if seed is not None else set())


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def load_run(run_dir: Path, name: str | None = None) -> RunRecord:
    """Read one run dir's overrides, metrics.json and failed.json."""
    name = name or run_dir.name
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else None
    setting, seed = split_overrides(overrides or [])
    try:
        metrics, failed = _read_json(run_dir / METRICS), _read_json(run_dir / FAILED_FILE)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return RunRecord(name, run_dir, setting, seed, None, f"unreadable results file: {err}", FAILED)
    failure = str(failed.get("reason", "unknown")) if failed is not None else None
    stop_reason = str((metrics or {}).get("stop_reason", ""))
    if failure is None and stop_reason.startswith("non_finite"):
        failure = stop_reason
    status = run_status(run_dir, metrics, failure)
    if failure is None and status == FAILED:  # a bug ended it: metrics.json says so, no failed.json
        failure = str(metrics.get("stop_reason"))
    return RunRecord(name, run_dir, setting, seed, metrics, failure, status)


def run_status(run_dir: Path, metrics: dict[str, Any] | None, failure: str | None) -> str:
    """Finished, running (a live process holds the run dir's lock), stopped by a signal, failed or killed."""
    if failure is not None:
        return FAILED
    if is_locked(run_dir):
        return RUNNING
    status = (metrics or {}).get("status")
    if status is None and metrics is not None:  # written before metrics.json had a status
        stop_reason = str(metrics.get("stop_reason", ""))
        status = INTERRUPTED if stop_reason.startswith("SIG") else FINISHED if stop_reason else None
    return status if status in (FINISHED, INTERRUPTED, FAILED) else KILLED


def _natural_key(path: Path) -> list:
    """Sort `2_...` before `10_...`: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _run_dirs(directory: Path) -> Iterator[Path]:
    if (directory / ".hydra" / "config.yaml").is_file():
        yield directory
        return  # a run's own subdirs (checkpoints, tensorboard) hold no runs
    for child in sorted(directory.iterdir()):
        if child.is_dir() and not child.is_symlink() and not child.name.startswith("."):
            yield from _run_dirs(child)


def find_runs(root: Path) -> list[RunRecord]:
    """Every run dir (a dir holding .hydra/config.yaml) at or below `root`, in natural name order."""
    run_dirs = sorted(_run_dirs(root), key=_natural_key)
    return [load_run(d, str(d.relative_to(root)) if d != root else d.name) for d in run_dirs]
