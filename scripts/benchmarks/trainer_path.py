"""The training benchmark's path (a): the Trainer as `scripts/train.py` builds it, plus the setup both training
suites share (benchmarks/training.py, benchmarks/dropout.py).

conf/train.yaml composed with the suite's overrides and checked as train() checks it, then the package's
own builders (callbacks, TensorBoard, progress bar); validation, sampling and periodic checkpoints are moved
past the timed steps, and a timer callback stops the fit when they end.
"""

from __future__ import annotations

import gc
import logging
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import lightning as L

from tinytransformer.errors import UserError
from tinytransformer.runtime.cli import CONFIG_DIR, project_env
from tinytransformer.runtime.overrides import compose_config
from tinytransformer.runtime.precision import resolve_precision
from tinytransformer.runtime.preflight import validate
from tinytransformer.runtime.recipe import build_callbacks, build_datamodule, build_module, build_trainer

from .machine import CpuSample, other_cpu_per_s, synchronize
from .plain_loop import Segment


class StepWindowTimer(L.Callback):
    """Wall time of optimizer steps warmup+1 .. warmup+steps, then stops the fit.

    Timed from the end of one step to the end of another, so every timed step includes the loop's own
    per-step work (batch fetch, hooks, logging). Synchronizes the GPU only at the two ends.
    """

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.segment: Segment | None = None
        self._start = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            synchronize(pl_module.device)
            self._start = time.perf_counter()
        elif trainer.global_step == self.warmup + self.steps:
            synchronize(pl_module.device)
            seconds = time.perf_counter() - self._start
            self.segment = Segment(seconds, float(outputs["loss"]), pl_module.model.num_parameters())
            pl_module.stop("benchmark_window")


def compose_trainer_config(overrides: list[str], output_dir: Path):
    """conf/train.yaml + overrides, checked as train() checks it; outputs go to `output_dir`."""
    project_env()
    cfg = compose_config(
        CONFIG_DIR, "train", [*overrides, f"paths.output_dir={output_dir}"], with_hydra=False
    )
    validate(cfg)
    resolve_precision(cfg)
    return cfg


def benchmark_overrides(cfg, after_window: int) -> list[str]:
    """What the benchmark changes in the user's config; none of it touches the timed steps."""
    # Validation, sampling and periodic checkpoints come after the timed window (the fit stops there).
    changes = [
        f"trainer.val_check_interval={after_window}",
        f"trainer.checkpoint_every_n_steps={after_window}",
    ]
    if "sample_generation" in (cfg.get("callbacks") or {}):
        changes.append(f"callbacks.sample_generation.every_n_steps={after_window}")
    return changes


def trainer_fit(overrides: list[str], output_dir: Path, dm, timer: L.Callback) -> None:
    """One fit() built as train() builds it, plus `timer`; `dm` is set up once for all fits."""
    cfg = compose_trainer_config(overrides, output_dir)
    output_dir.mkdir(parents=True)  # Hydra makes the run dir before train() runs
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg, dm)
    trainer = build_trainer(cfg, output_dir, [*build_callbacks(cfg), timer])
    gc.collect()  # the previous fit's garbage is collected now, not during the timed steps
    trainer.fit(module, datamodule=dm, weights_only=True)
    if module.stop_reason != "benchmark_window":
        raise RuntimeError(f"the Trainer stopped at step {trainer.global_step}, before its timed steps ended")


def trainer_round(overrides: list[str], output_dir: Path, dm, warmup: int, steps: int) -> Segment:
    """One fit of the Trainer path timed over `steps` steps after `warmup`."""
    timer = StepWindowTimer(warmup, steps)
    trainer_fit(overrides, output_dir, dm, timer)
    return timer.segment


def measured_round(run, *args) -> Segment:
    before = CpuSample.now()
    segment = run(*args)
    segment.other_cpu_per_s = other_cpu_per_s(before, CpuSample.now())
    return segment


def check_counts(rounds: int, steps: int, warmup: int) -> None:
    if rounds < 1 or steps < 1 or warmup < 1:
        raise UserError(f"rounds, steps and warmup must be >= 1 (got {rounds}, {steps}, {warmup})")


@contextmanager
def benchmark_setup(overrides: list[str], rounds: int, steps: int, warmup: int, fit_steps: int):
    """(temporary dir, the overrides with validation and the rest moved past a fit's `fit_steps`, the
    config, the datamodule set up once for all fits), with Lightning's info lines ("GPU available: ...")
    off."""
    check_counts(rounds, steps, warmup)
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    with tempfile.TemporaryDirectory(prefix="tinytransformer-bench-") as tmp:
        cfg = compose_trainer_config(overrides, Path(tmp))
        if cfg.trainer.max_steps < fit_steps:
            raise UserError(
                f"trainer.max_steps={cfg.trainer.max_steps} ends before the benchmark's {fit_steps} steps; "
                "raise it, or lower --rounds or --steps"
            )
        overrides = [*overrides, *benchmark_overrides(cfg, fit_steps + 1)]
        cfg = compose_trainer_config(overrides, Path(tmp))
        dm = build_datamodule(cfg)
        dm.setup("fit")
        lightning_log.setLevel(logging.WARNING)
        try:
            yield Path(tmp), overrides, cfg, dm
        finally:
            lightning_log.setLevel(level)
