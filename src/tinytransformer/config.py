"""Configs checked at the door: every value's type and range, one clear line per mistake.

Mistyped keys are caught by Hydra's struct mode at compose time (see `cli.py`); this module checks what
composes but makes no sense (`trainer.max_steps=abc`, `model.dropout=1.5`, heads not dividing d_model).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tinytransformer.errors import UserError

Check = tuple[str, type | tuple[type, ...], Callable[[Any], bool] | None, str]

_INT, _NUM = (int,), (int, float)
# Lightning's precisions, and `auto` (training.auto_precision: bf16-mixed where the hardware has bf16).
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "32")
CHECKS: list[Check] = [
    ("seed", _INT, lambda v: v >= 0, "an integer >= 0"),
    ("data.block_size", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("data.batch_size", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("data.eval_batch_size", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("data.num_chars", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("data.val_fraction", _NUM, lambda v: 0 < v < 1, "a number in (0, 1)"),
    ("data.test_fraction", _NUM, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("data.max_eval_chars", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("data.overfit_batches", _INT, lambda v: v >= 0, "an integer >= 0 (0 = off)"),
    ("data.tokenizer", (str,), lambda v: v in ("char", "simple"), "'char' or 'simple'"),
    ("data.augment.mask_prob", _NUM, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("data.augment.substitute_prob", _NUM, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("scheduler.name", (str,), lambda v: v in ("none", "cosine"), "'none' or 'cosine'"),
    ("trainer.max_steps", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("trainer.val_check_interval", _INT, lambda v: v >= 1, "an integer >= 1 (steps)"),
    ("trainer.log_every_n_steps", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("trainer.checkpoint_every_n_steps", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("trainer.precision", (str, int), lambda v: str(v) in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
]
# Checked where present: a model class other than TinyTransformer may take other arguments (and a run dir
# saved before models were swappable has no model._target_).
OPTIONAL_CHECKS: list[Check] = [
    ("model._target_", (str,), None, "a class path, package.module.Class"),
    ("optimizer._target_", (str,), None, "a class path, e.g. torch.optim.AdamW"),
    ("optimizer.lr", _NUM, lambda v: v > 0, "a number > 0"),
    ("optimizer.weight_decay", _NUM, lambda v: v >= 0, "a number >= 0"),
    ("model.d_model", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("model.n_heads", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("model.n_layers", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("model.dropout", _NUM, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("model.bias", (bool,), None, "true or false"),
    ("model.compile", (bool,), None, "true or false"),
    ("scheduler.warmup_steps", _INT, lambda v: v >= 0, "an integer >= 0"),
    ("scheduler.min_lr_ratio", _NUM, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    (
        "scheduler.on_resume",
        (str,),
        lambda v: v in ("keep", "rebuild"),
        "'keep' (a resumed run continues its checkpoint's schedule) or 'rebuild' (planned anew for this config)",
    ),
    # Optional: the configs of run dirs from before it was listed lack it (resume=<run dir>).
    ("trainer.accumulate_grad_batches", _INT, lambda v: v >= 1, "an integer >= 1 (1 = no accumulation)"),
    (
        "callbacks.gradient_clipping.max_norm",
        _NUM,
        lambda v: v >= 0,
        "a number >= 0 (0 = measure, never clip)",
    ),
    ("callbacks.early_stopping.patience", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("callbacks.early_stopping.min_delta", _NUM, lambda v: v >= 0, "a number >= 0"),
    ("callbacks.sample_generation.every_n_steps", _INT, lambda v: v >= 0, "an integer >= 0 (0 = off)"),
    ("callbacks.sample_generation.stop_at_quality", _NUM, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    (
        "trainer.max_time",
        (str,),
        lambda v: re.fullmatch(r"\d+:\d\d:\d\d:\d\d", v) is not None,
        "a time budget DD:HH:MM:SS (e.g. 00:01:30:00 for 90 minutes) or null",
    ),
]


def _is_type(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    if types == _NUM:
        return isinstance(value, numbers.Real)
    return isinstance(value, types)


def check_value(key: str, value: Any, types: tuple[type, ...], ok: Callable | None, allowed: str) -> None:
    if not _is_type(value, types) or (ok is not None and not ok(value)):
        raise UserError(f"{key}={value!r} is not allowed: {key} must be {allowed}")


def select(cfg: DictConfig, key: str) -> Any:
    """The value at a dotted key, resolved; a value that fails to resolve is a user error."""
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as err:  # omegaconf raises several types for missing or broken values
        raise UserError(f"{key}: {str(err).splitlines()[0]}; set it with {key}=<value>") from None


def validate(cfg: DictConfig) -> None:
    """Raise a UserError naming the first bad value in `cfg`."""
    for key, types, ok, allowed in CHECKS:
        check_value(key, select(cfg, key), types, ok, allowed)
    for key, types, ok, allowed in OPTIONAL_CHECKS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            check_value(key, value, types, ok, allowed)
    d_model, n_heads = cfg.model.get("d_model"), cfg.model.get("n_heads")
    if isinstance(d_model, int) and isinstance(n_heads, int) and d_model % n_heads:
        raise UserError(
            f"model.n_heads={n_heads} does not divide model.d_model={d_model}; "
            f"pick n_heads from {[h for h in range(1, d_model + 1) if d_model % h == 0][:12]}"
        )
    if cfg.data.val_fraction + cfg.data.test_fraction >= 1:
        raise UserError(
            f"data.val_fraction + data.test_fraction = {cfg.data.val_fraction + cfg.data.test_fraction} "
            "leaves no training data; their sum must be < 1"
        )


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python data (safe for checkpoints and weights_only loading)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
