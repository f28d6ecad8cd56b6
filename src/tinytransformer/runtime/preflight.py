"""The config checker: a composed config checked before any work, one line (a UserError) and no run dir for
the first mistake.

- `validate`: every value's type and range. The schema (schema.py, data/config.py: each key we own, its
  type, default and range check), OPTIONAL_CHECKS for the common keys of swappable parts, the default
  model's TransformerConfig, and the names of lightning.Trainer arguments. Only those last two import torch
  and Lightning, so a mistake in a key of ours costs no more than Hydra's compose. It also checks a resumed
  run's saved config, which composes without the schema.
- `check_components`: every swappable part (`_target_`) imported and its arguments checked against its
  signature; the model and optimizer built on the meta device (an optimizer refusing a parameter); stock
  Lightning callbacks and Trainer flags a run cannot use; loggers whose packages are missing.
- `check`: both, in that order: the command line's pre-flight, and every run's (a sweep's jobs too) first
  step in recipe.train.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from tinytransformer.checks import check_fields, check_value
from tinytransformer.data.config import DataConfig
from tinytransformer.errors import UserError
from tinytransformer.runtime.config import to_plain
from tinytransformer.runtime.schema import RunConfig, TrainerConfig
from tinytransformer.specs import check_arguments, check_required, resolve

# The metrics a callback can monitor (EarlyStopping, ModelCheckpoint: `monitor`): LanguageModel's, after
# each validation or at log steps, and those of the default callbacks (conf/callbacks/).
MONITORABLE_METRICS = (
    *("val/loss", "val/bpc", "val/ppl", "val/acc", "val/loss_best", "train/loss_avg", "train/bpc_avg"),
    *("train/loss", "train/grad_norm", "train/clip_fraction", "train/tokens_per_s", "train/mfu"),
)
# Stock Lightning callbacks a run cannot use, and why (each one fails in a run otherwise).
REFUSED_CALLBACKS = {
    "BackboneFinetuning": "it unfreezes a `backbone` attribute, which LanguageModel has not",
    "BatchSizeFinder": "it tunes a `batch_size` attribute of the module; set data.batch_size instead",
    "LearningRateFinder": "it tunes an `lr` attribute of the module; set optimizer.lr instead",
    "StochasticWeightAveraging": (
        "it averages from an epoch on, and a run's token stream is one epoch; "
        "use lightning.pytorch.callbacks.EMAWeightAveraging"
    ),
    "ThroughputMonitor": (
        "its batch_size_fn is a Python function, which a YAML cannot give; callbacks.throughput logs "
        "train/tokens_per_s and train/mfu"
    ),
}
# Stock callbacks that write to the run's loggers, and stop with an error where it has none (logger=none).
NEED_A_LOGGER = ("LearningRateMonitor", "DeviceStatsMonitor")
# Stock callbacks that need a package we do not install.
CALLBACK_PACKAGES = {"RichProgressBar": "rich", "RichModelSummary": "rich", "DeviceStatsMonitor": "psutil"}
# Trainer flags a run takes only at the values given (the first is its default), and why.
REFUSED_TRAINER_FLAGS = {
    "barebones": ((False,), "it turns off checkpointing and logging, which a run's records need"),
    "check_val_every_n_epoch": (
        (None, 1),
        "a run's token stream is one epoch, so validation would never run; set trainer.val_check_interval (steps)",
    ),
}
# The packages a logger class needs beyond ours, and the extra (pyproject.toml) that installs them.
LOGGER_EXTRAS = {
    "MLFlowLogger": ("mlflow", ["mlflow", "sqlalchemy", "alembic"]),
    "WandbLogger": ("wandb", ["wandb"]),
}


Rule = tuple[str, type | tuple[type, ...], Callable[[Any], bool] | None, str]

_INT, _NUM = (int,), (int, float)
# Keys of swappable parts (each class takes arguments of its own) and of library callbacks, checked where
# present: a dataclass per library class would copy its signature.
OPTIONAL_CHECKS: list[Rule] = [
    ("model._target_", (str,), None, "a class path, package.module.Class"),
    ("optimizer._target_", (str,), None, "a class path, e.g. torch.optim.AdamW"),
    ("optimizer.lr", _NUM, lambda v: v > 0, "a number > 0"),
    ("optimizer.weight_decay", _NUM, lambda v: v >= 0, "a number >= 0"),
    ("model.compile", (bool,), None, "true or false"),
    ("scheduler._target_", (str,), None, "a class path, e.g. torch.optim.lr_scheduler.StepLR"),
    ("scheduler.warmup_steps", _INT, lambda v: v >= 0, "an integer >= 0"),
    ("scheduler.min_lr_ratio", _NUM, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    (
        "scheduler.on_resume",
        (str,),
        lambda v: v in ("keep", "rebuild"),
        "'keep' (a resumed run continues its checkpoint's schedule) or 'rebuild' (planned anew for this config)",
    ),
    ("callbacks.early_stopping.patience", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("callbacks.early_stopping.min_delta", _NUM, lambda v: v >= 0, "a number >= 0"),
    ("callbacks.sample_generation.every_n_steps", _INT, lambda v: v >= 0, "an integer >= 0 (0 = off)"),
    ("callbacks.sample_generation.stop_at_quality", _NUM, lambda v: 0 < v <= 1, "a number in (0, 1]"),
]


def select(cfg: DictConfig, key: str) -> Any:
    """The value at a dotted key, resolved, as plain data; a value missing or failing to resolve is a user
    error."""
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
        if isinstance(value, DictConfig | ListConfig):
            return OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
        return value
    except Exception as err:  # omegaconf raises several types for missing or broken values
        key = getattr(err, "full_key", None) or key
        raise UserError(f"{key}: {str(err).splitlines()[0]}; set it with {key}=<value>") from None


def validate(cfg: DictConfig) -> None:
    """Raise a UserError naming the first value in `cfg` that its schema or OPTIONAL_CHECKS refuses."""
    names = [f.name for f in dataclasses.fields(RunConfig)]
    check_fields(RunConfig, {name: select(cfg, name) for name in names if name in cfg}, "", closed=False)
    DataConfig.check(select(cfg, "data"))
    trainer = select(cfg, "trainer")
    check_fields(TrainerConfig, trainer, "trainer", closed=False)
    for key, types, ok, allowed in OPTIONAL_CHECKS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            check_value(key, value, types, ok, allowed)
    # Last, as they import torch and Lightning: a mistake found above costs neither.
    _check_model(select(cfg, "model"))
    _check_trainer_arguments(trainer)


def _check_model(model: dict[str, Any]) -> None:
    """TinyTransformer's arguments against its TransformerConfig (another class's are checked against its
    signature, by check_components)."""
    from tinytransformer.model.transformer import DEFAULT_MODEL, TinyTransformer, TransformerConfig

    target = str(model.get("_target_") or "")
    if target in (DEFAULT_MODEL, f"{TinyTransformer.__module__}.{TinyTransformer.__name__}"):
        TransformerConfig.check({k: v for k, v in model.items() if k not in ("_target_", "compile")})


def _check_trainer_arguments(trainer: dict[str, Any]) -> None:
    """The `trainer` node takes any lightning.Trainer argument beside TrainerConfig's fields: no other key."""
    import lightning

    own = {f.name for f in dataclasses.fields(TrainerConfig)}
    check_arguments(lightning.Trainer, {k: v for k, v in trainer.items() if k not in own}, "trainer")


def check(cfg: DictConfig) -> None:
    """`validate`, then `check_components`: the first mistake in `cfg`, in one line, before any work."""
    validate(cfg)
    check_components(cfg)


def check_components(cfg: DictConfig) -> None:
    """A UserError, before any work, for a model, optimizer, scheduler, regularizer, callback or logger
    that cannot be built or used: the builders' own checks."""
    import torch  # here, not at the top: a mistake validate finds first costs no torch import

    from tinytransformer.model import build_model
    from tinytransformer.training.optim import build_optimizer, scheduler_class
    from tinytransformer.training.regularizers import build_regularizers

    model_spec = {k: v for k, v in to_plain(cfg.model).items() if k != "compile"}
    with torch.device("meta"):  # shapes only: no memory, no random numbers drawn
        # The data sets vocab_size; any stands in here, with the same parameter names and dimensions.
        model = build_model({**model_spec, "vocab_size": 2, "block_size": cfg.data.block_size})
        build_optimizer(model, to_plain(cfg.optimizer))  # also one line for a parameter it refuses
    scheduler_class(to_plain(cfg.scheduler))
    build_regularizers(to_plain(cfg.regularizers) if cfg.get("regularizers") else {}, model=None)
    check_callbacks(cfg)
    check_loggers(cfg)
    check_trainer_flags(cfg)


def check_trainer_flags(cfg: DictConfig) -> None:
    """A UserError for a Lightning Trainer flag a run cannot take (REFUSED_TRAINER_FLAGS)."""
    for flag, (allowed, why) in REFUSED_TRAINER_FLAGS.items():
        value = cfg.trainer.get(flag, allowed[0])
        if value not in allowed:
            raise UserError(f"trainer.{flag}={value}: not for this template: {why}")


def check_callbacks(cfg: DictConfig) -> None:
    """Each callback's class and arguments; a stock one the run cannot use (REFUSED_CALLBACKS, no logger
    for one that writes to them, a missing package, a second progress bar, a `monitor` that names no
    metric of the run) in one line."""
    from lightning.pytorch.callbacks import ProgressBar

    specs = {
        name: OmegaConf.to_container(spec, resolve=False)  # keys and plain values: no interpolation needed
        for name, spec in (cfg.get("callbacks") or {}).items()
        if spec is not None
    }
    classes = {name: resolve(spec, f"callbacks.{name}")[0] for name, spec in specs.items()}
    own_callbacks = any(
        not cls.__module__.startswith(("lightning.", "tinytransformer.")) for cls in classes.values()
    )
    for name, cls in classes.items():
        key, arguments = f"callbacks.{name}", {k: v for k, v in specs[name].items() if k != "_target_"}
        if cls.__name__ in REFUSED_CALLBACKS and cls.__module__.startswith("lightning."):
            raise UserError(f"{key}: {cls.__name__} cannot be used here: {REFUSED_CALLBACKS[cls.__name__]}")
        check_required(cls, arguments, key)
        if cls.__name__ in NEED_A_LOGGER and not any((cfg.get("logger") or {}).values()):
            raise UserError(
                f"{key}: {cls.__name__} writes to the run's loggers, and this run has none; "
                f"drop it with ~{key}, or choose a logger (logger=tensorboard)"
            )
        package = CALLBACK_PACKAGES.get(cls.__name__)
        if package and importlib.util.find_spec(package) is None:
            raise UserError(f"{key}: {cls.__name__} needs the {package} package: pip install {package}")
        monitor = OmegaConf.select(cfg, f"{key}.monitor") if "monitor" in arguments else None  # resolved
        if monitor is not None and monitor not in MONITORABLE_METRICS and not own_callbacks:
            raise UserError(
                f"{key}.monitor={monitor}: not a metric this run logs; monitor one of {', '.join(MONITORABLE_METRICS)}"
            )
    bars = [name for name, cls in classes.items() if isinstance(cls, type) and issubclass(cls, ProgressBar)]
    if len(bars) > 1:
        raise UserError(
            f"callbacks.{bars[1]}: a run shows one progress bar, and callbacks.{bars[0]} is one; "
            f"drop it with ~callbacks.{bars[0]}"
        )


def check_loggers(cfg: DictConfig) -> None:
    """A UserError for a chosen logger whose optional packages are not installed."""
    for name, spec in (cfg.get("logger") or {}).items():
        target = str((spec or {}).get("_target_", ""))
        extra, packages = LOGGER_EXTRAS.get(target.rpartition(".")[2], ("", []))
        if any(importlib.util.find_spec(package) is None for package in packages):
            raise UserError(f"logger={name} needs the {extra} extra: pip install -e '.[{extra}]'")
