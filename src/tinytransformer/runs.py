"""Run directories: the Hydra task, resuming a run in place, and never writing over an earlier run."""

from __future__ import annotations

import logging
import sys
import traceback
from datetime import datetime
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from tinytransformer.callbacks.resume import LAST, RunInterrupted
from tinytransformer.callbacks.summary import write_json_atomic
from tinytransformer.errors import EXIT_USER_ERROR, UserError

log = logging.getLogger(__name__)
FAILED = "failed.json"


class TrainingFailed(Exception):
    """Training ran but could not finish (e.g. a non-finite loss): exit non-zero, record it in sweeps."""


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


def refuse_existing_run(run_dir: str) -> None:
    """A new run must not write into a run dir that already holds checkpoints or results."""
    path = Path(run_dir)
    if (path / "checkpoints").exists() or (path / "metrics.json").exists():
        raise UserError(
            f"hydra.run.dir={run_dir} already holds a run; continue it with resume={run_dir} "
            "or choose a new dir"
        )


def _record_failure(output_dir: Path, reason: str) -> None:
    write_json_atomic(output_dir / FAILED, {"status": "failed", "reason": reason})


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def hydra_train(cfg: DictConfig) -> float | None:
    """The Hydra task: train one job; in a sweep, a failing job is recorded and the sweep goes on."""
    from tinytransformer.training import train

    hc = HydraConfig.get()
    output_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    ckpt = str(Path(cfg.resume) / "checkpoints" / LAST) if cfg.get("resume") else None
    if not multirun:
        log.info(OmegaConf.to_yaml(cfg, resolve=False))
    try:
        results = train(cfg, output_dir, ckpt_path=ckpt)
    except RunInterrupted as err:
        log.warning(f"\n{err}. Resume with: python scripts/train.py resume={output_dir}")
        sys.exit(err.exit_code)
    except (UserError, TrainingFailed) as err:
        _record_failure(output_dir, str(err))
        if not multirun:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR if isinstance(err, UserError) else 1)
        log.error(f"job {hc.job.num} failed: {err}")
        return None
    except Exception as err:
        if not multirun:
            raise
        _record_failure(output_dir, f"{type(err).__name__}: {err}")
        log.error(f"job {hc.job.num} failed:\n{traceback.format_exc()}")
        return None
    # The return value is what a sweeper (e.g. Optuna) minimises.
    return results.get("best_val_loss")
