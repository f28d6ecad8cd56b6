"""The schema of the run's config: each key we own, its type, its default (the default run's) and its range
check, side by side. `config.register_schemas` puts it in Hydra's ConfigStore as the base of conf/train.yaml,
so the YAMLs hold only what differs from these defaults; `preflight.validate` checks a composed config with it.
The `data` node's schema is the data module's own config, `tinytransformer.data.config.DataConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tinytransformer.checks import at_least, matches, one_of

# Lightning's precisions, and `auto` (training.precision.auto_precision: bf16-mixed where the hardware has bf16).
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "32")
TIME_BUDGET = r"\d+:\d\d:\d\d:\d\d"


@dataclass
class TrainerConfig:
    """The `trainer` keys we set or check: lightning.Trainer arguments whose value in the default run
    differs from Lightning's default, and two of our own. Any other Trainer argument may be set too
    (`trainer.profiler=simple`); conf/trainer/*.yaml set those that differ from Lightning's defaults."""

    max_steps: int = field(default=2000, metadata=at_least(1))
    # Optimizer steps between validations (Lightning counts micro-batches: the recipe converts).
    val_check_interval: int = field(default=250, metadata=at_least(1, "(steps)"))
    log_every_n_steps: int = field(default=50, metadata=at_least(1))
    # auto: bf16-mixed where the hardware multiplies bf16 natively (CUDA GPUs with bf16, CPUs with AMX),
    # else 32-true. Set 32-true for fp32 everywhere.
    precision: str | int = field(default="auto", metadata=one_of(*PRECISIONS))
    # Micro-batches per optimizer step, each with its own windows and dropout: the effective batch is
    # data.batch_size x this x processes.
    accumulate_grad_batches: int = field(default=1, metadata=at_least(1, "(1 = no accumulation)"))
    max_time: str | None = field(
        default=None,
        metadata=matches(TIME_BUDGET, "a time budget DD:HH:MM:SS (e.g. 00:01:30:00 for 90 minutes)"),
    )
    # Clip the global gradient norm to this before each optimizer step (0 = measure, never clip; null =
    # neither): LanguageModel.configure_gradient_clipping logs train/grad_norm and train/clip_fraction.
    gradient_clip_val: float | None = field(default=1.0, metadata=at_least(0, "(0 = measure, never clip)"))
    # Ours: how often last.ckpt, for resuming, is written.
    checkpoint_every_n_steps: int = field(default=500, metadata=at_least(1))
    # Ours: torch's CPU threads in each process (null = torch's default: all cores).
    threads_per_process: int | None = field(default=None, metadata=at_least(1))


@dataclass
class RunConfig:
    """The top level of conf/train.yaml: the run's own keys, beside one node per config group."""

    task_name: str = "train"  # logs/<task_name>/runs/...
    seed: int = field(default=1234, metadata=at_least(0))
    # A run dir to continue from its last.ckpt (with its saved config; overrides given here extend it).
    resume: str | None = None
    # Test the best checkpoint on the test split after training.
    test: bool = True
    # Regularizers that need code (training/regularizers.py), by name; conf/regularization/ adds them.
    regularizers: dict[str, Any] = field(default_factory=dict)
