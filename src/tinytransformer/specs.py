"""Specs of swappable parts as plain data, `{"_target_": "package.module.Class", **arguments}`: the class
imported and the arguments checked against its signature, in one line when either is wrong.

The same specs go into checkpoints, so a model or optimizer is rebuilt from a checkpoint without Hydra
(Hydra's `instantiate` reads the same `_target_` keys for the callbacks and loggers of a run).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from tinytransformer.errors import UserError


def resolve(spec: dict[str, Any], key: str) -> tuple[type, dict[str, Any]]:
    """(The class `spec["_target_"]` names, the other keys), for the config key `key` (e.g. `model`).

    `_partial_` (Hydra's mark of a class called later with more arguments) is dropped.
    """
    arguments = {k: v for k, v in spec.items() if k not in ("_target_", "_partial_")}
    target = spec.get("_target_") or ""
    if not target:
        raise UserError(f"{key}._target_: missing; name the class as {key}._target_=package.module.Class")
    module_name, _, class_name = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise UserError(
            f"{key}._target_={target}: cannot import it ({err}); name a class as package.module.Class, "
            "with its module importable (on PYTHONPATH)"
        ) from None
    check_arguments(cls, arguments, key)
    return cls, arguments


def check_arguments(cls: type, arguments: dict[str, Any], key: str) -> None:
    """A UserError naming the first key of `arguments` that `cls` does not take."""
    parameters = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(arguments) - set(parameters))
    if unknown:
        name = cls.__name__
        raise UserError(
            f"{key}.{unknown[0]}: {name} takes no argument {unknown[0]!r}; its arguments are "
            f"{', '.join(parameters)} (remove the key with ~{key}.{unknown[0]})"
        )


def check_required(cls: type, arguments: dict[str, Any], key: str, given: int = 0) -> None:
    """A UserError naming the first argument `cls` needs that `arguments` lack; its first `given`
    arguments are passed by the code that builds it (a scheduler's optimizer)."""
    parameters = list(inspect.signature(cls).parameters.values())[given:]
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    required = [p.name for p in parameters if p.default is p.empty and p.kind not in variadic]
    missing = [name for name in required if name not in arguments]
    if missing:
        raise UserError(
            f"{key}.{missing[0]}: missing; {cls.__name__} needs it (set it with +{key}.{missing[0]}=<value>)"
        )
