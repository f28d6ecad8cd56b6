"""Every swappable part checked before any work: a part that cannot be built, or a stock Lightning callback
that a run cannot use, costs one line (a UserError) and no run dir."""

from __future__ import annotations

import importlib.util

import torch
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from tinytransformer.errors import UserError
from tinytransformer.model import build_model
from tinytransformer.runtime.config import to_plain
from tinytransformer.specs import check_required, resolve
from tinytransformer.training.optim import build_optimizer, scheduler_class
from tinytransformer.training.regularizers import build_regularizers

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


def check_components(cfg: DictConfig) -> None:
    """A UserError, before any work, for a model, optimizer, scheduler, regularizer, callback or logger
    that cannot be built or used: the builders' own checks."""
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
    for one that writes to them, a missing package, a second progress bar, a `monitor` that names no metric of the run) in one line."""
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
