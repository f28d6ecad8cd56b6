"""Configs checked at the door: every value's type and range, one clear line per mistake.

The schema (schema.py: each key we own, its type, default and range check) is registered in Hydra's
ConfigStore, so Hydra refuses a mistyped key or a value of the wrong type at compose time
(overrides.compose_error_line words it as `validate` does). `validate` checks what composes but makes no
sense (`model.dropout=1.5`, heads not dividing d_model), and a resumed run's saved config, which composes
without the schema.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from tinytransformer.checks import check_fields, check_value
from tinytransformer.data.config import DataConfig
from tinytransformer.errors import UserError
from tinytransformer.runtime.schema import RunConfig, TrainerConfig
from tinytransformer.specs import check_arguments

ROOT = Path(__file__).resolve().parents[3]  # the repository: conf/, scripts/
CONFIG_DIR = ROOT / "conf"

Rule = tuple[str, type | tuple[type, ...], Callable[[Any], bool] | None, str]

SCHEMA = "train_schema"  # the first entry of conf/train.yaml's defaults list
_INT, _NUM = (int,), (int, float)
# Keys of swappable parts (each class takes arguments of its own) and of library callbacks, checked where
# present: a dataclass per library class would copy its signature. A run dir saved before models were
# swappable has no model._target_.
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
    signature, by training.preflight.check_components)."""
    from tinytransformer.model.transformer import DEFAULT_MODEL, TinyTransformer, TransformerConfig

    target = str(model.get("_target_") or "")
    if target in (DEFAULT_MODEL, f"{TinyTransformer.__module__}.{TinyTransformer.__name__}"):
        TransformerConfig.check({k: v for k, v in model.items() if k not in ("_target_", "compile")})


def _check_trainer_arguments(trainer: dict[str, Any]) -> None:
    """The `trainer` node takes any lightning.Trainer argument beside TrainerConfig's fields: no other key."""
    import lightning

    own = {f.name for f in dataclasses.fields(TrainerConfig)}
    check_arguments(lightning.Trainer, {k: v for k, v in trainer.items() if k not in own}, "trainer")


def register_schemas() -> None:
    """The schema in Hydra's ConfigStore as `train_schema`, the base conf/train.yaml extends. Its top level
    is untyped (a dataclass would refuse each group's node and any key conf/ adds; validate checks
    RunConfig's fields); `data` is typed and closed; `trainer` is typed and open to every other
    lightning.Trainer argument (validate checks their names)."""
    from hydra.core.config_store import ConfigStore

    root = OmegaConf.create(dataclasses.asdict(RunConfig()))
    root.data = OmegaConf.structured(DataConfig)
    root.trainer = OmegaConf.structured(TrainerConfig)
    OmegaConf.set_struct(root.trainer, False)
    ConfigStore.instance().store(name=SCHEMA, node=root)


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python data (safe for checkpoints and weights_only loading)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
