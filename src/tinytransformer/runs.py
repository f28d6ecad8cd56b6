"""Run directories: where results go, resuming a run in place, never writing over an earlier run.

Light on purpose (no Lightning import): the command line checks run dirs before it loads the trainer.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tinytransformer.errors import UserError

LAST = "last.ckpt"  # the checkpoint a run resumes from
FAILED = "failed.json"  # {"status": "failed", "reason": ...}: a job that could not finish
METRICS = "metrics.json"  # the run's summary


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write via a temporary file + rename: a kill mid-write leaves the previous file intact."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def record_failure(output_dir: Path, reason: str) -> None:
    write_json_atomic(output_dir / FAILED, {"status": "failed", "reason": reason})


def sweep_job_name(
    sweep_dir: str,
    job_overrides: list[str],
    sweeper_params: dict[str, Any],
    all_overrides: str,
    max_chars: int = 200,
) -> str:
    """A sweep job's name: its values of the swept keys, e.g. `model.dropout=0.1,seed=2`.

    Swept keys are those of hydra.sweeper.params, and those given several values on the command line (as
    the sweep's multirun.yaml records them; not every sweeper writes one). Without any, the name is
    `all_overrides` (Hydra's override_dirname). Cut to `max_chars`: file names have a length limit, and
    the job number in front keeps names unique.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    multirun = Path(sweep_dir) / "multirun.yaml"
    recorded = yaml.safe_load(multirun.read_text()) if multirun.is_file() else None
    command_line = ((recorded or {}).get("hydra") or {}).get("overrides", {}).get("task", [])
    parsed = OverridesParser.create().parse_overrides(list(command_line))
    swept = {o.key_or_group for o in parsed if o.is_sweep_override()} | set(sweeper_params)
    named = sorted(o for o in job_overrides if o.split("=", 1)[0].lstrip("+~") in swept)
    return (",".join(named) if named else all_overrides)[:max_chars]


def check_resumable(path: str, multirun: bool) -> Path:
    run_dir = Path(path).expanduser().resolve()
    if multirun:
        raise UserError("resume= continues one run; it cannot be combined with -m (multirun)")
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise UserError(
            f"resume={path}: not a run dir (no .hydra/config.yaml); pass a dir under logs/train/runs/"
        )
    if not (run_dir / "checkpoints" / LAST).is_file():
        raise UserError(
            f"resume={path}: the run has no checkpoints/{LAST} to resume from; start a new run instead"
        )
    return run_dir


# What a checkpoint fixes: the weights' shapes and the optimizer state (its lr and decay included) are
# restored from it, so a new value for these keys would be silently ignored or fail to load.
FIXED_BY_CHECKPOINT = ("model.", "optimizer.", "data.block_size", "data.tokenizer")


def check_resume_overrides(overrides: list[str], config_dir: Path) -> None:
    """A resumed run uses its saved config: keys can change, config groups cannot be picked again."""
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key.startswith(FIXED_BY_CHECKPOINT):
            raise UserError(
                f"{override}: a resumed run restores the model and optimizer state from its checkpoint, so "
                f"{key} cannot change; start a new run to try another value"
            )
        if "." not in key and (config_dir / key).is_dir():
            raise UserError(
                f"{override}: a resumed run keeps its saved config, so config groups cannot be chosen again; "
                f"set keys instead (e.g. {key}.<key>=<value>)"
            )


def resume_overrides(run_dir: Path, config_dir: Path) -> list[str]:
    """Hydra overrides that continue `run_dir` in place, keeping its earlier .hydra/ files."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    return [
        f"hydra.run.dir={run_dir}",
        "hydra.job.name=train",
        f"hydra.output_subdir=.hydra/resume-{stamp}",
        f"hydra.searchpath=[file://{config_dir}]",
        "hydra/job_logging=tinytransformer",
    ]


def checkpoint_to_continue(output_dir: Path) -> Path | None:
    """The last.ckpt of a sweep job started again in its own run dir (SLURM requeued it), if it has one."""
    last = Path(output_dir) / "checkpoints" / LAST
    return last if last.is_file() else None


def refuse_existing_run(run_dir: str) -> None:
    """A new run must not write into a run dir that already holds checkpoints or results."""
    path = Path(run_dir)
    if (path / "checkpoints").exists() or (path / METRICS).exists():
        raise UserError(
            f"hydra.run.dir={run_dir} already holds a run; continue it with resume={run_dir} or choose a new dir"
        )
