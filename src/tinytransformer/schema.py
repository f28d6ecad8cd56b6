"""The schema of the run's config: each key we own, its type, its default (the default run's) and its range
check, side by side. `config.register_schemas` puts it in Hydra's ConfigStore as the base of conf/train.yaml,
so the YAMLs hold only what differs from these defaults; `config.validate` checks a composed config with it.

Plain dataclasses: the data module takes a DataConfig as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tinytransformer.checks import at_least, check_fields, in_range, matches, one_of
from tinytransformer.errors import UserError

# Lightning's precisions, and `auto` (training.precision.auto_precision: bf16-mixed where the hardware has bf16).
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "32")
TIME_BUDGET = r"\d+:\d\d:\d\d:\d\d"


@dataclass
class AugmentConfig:
    """Noise on training inputs only (targets stay clean): conf/regularization/augmentation.yaml."""

    mask_prob: float = field(default=0.0, metadata=in_range(0, 1))
    substitute_prob: float = field(default=0.0, metadata=in_range(0, 1))


@dataclass
class DataConfig:
    """The `data` node: corpus -> tokenizer -> windows; conf/data/*.yaml set what differs."""

    corpus: str = "tiny_world"  # tiny_world | text_file | shakespeare | inline
    path: str | None = None  # data=text_file: the file; data=shakespeare: a local copy (else downloaded)
    text: str | None = None  # data=inline: the training text
    val_text: str | None = None  # data=inline: the held-out text (the val split; no test split)
    encoding: str = "utf-8"
    num_chars: int = field(default=1_000_000, metadata=at_least(1))  # size of the generated tiny_world corpus
    # Relative to the working dir; a run's is paths.cache_dir (conf/data/tiny_world.yaml).
    cache_dir: str = "data/cache"
    tokenizer: str = field(default="char", metadata=one_of("char", "simple"))
    block_size: int = field(default=64, metadata=at_least(1))
    batch_size: int = field(default=32, metadata=at_least(1))
    eval_batch_size: int = field(default=64, metadata=at_least(1))
    val_fraction: float = field(default=0.05, metadata=in_range(0, 1, low_open=True))
    test_fraction: float = field(default=0.05, metadata=in_range(0, 1))
    # Scored val characters per validation (test: all). 50,000: the built-in corpus's whole val split (5 % of
    # 1M), where 20,000 left the val bits/char of a seed +-0.5 % noisy about its test bits/char.
    max_eval_chars: int = field(default=50_000, metadata=at_least(1))
    # > 0: train on that many fixed batches only (debug=overfit).
    overfit_batches: int = field(default=0, metadata=at_least(0, "(0 = off)"))
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.augment, Mapping):  # plain data: a resolved config, a checkpoint's hparams
            self.augment = AugmentConfig(**self.augment)

    @staticmethod
    def check(values: Mapping[str, Any], key: str = "data") -> None:
        """A UserError for the first value of a `data` node (plain data) that is not allowed, or not a key."""
        check_fields(DataConfig, values, key)
        total = values.get("val_fraction", DataConfig.val_fraction)
        total += values.get("test_fraction", DataConfig.test_fraction)
        if total >= 1:
            raise UserError(
                f"{key}.val_fraction + {key}.test_fraction = {total} leaves no training data; "
                "their sum must be < 1"
            )


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
