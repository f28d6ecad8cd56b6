"""Range checks that sit beside dataclass fields, and the one line a value that fails its check raises.

    block_size: int = field(default=64, metadata=at_least(1))

A field's type says which kind of value it takes (int: an integer, float: any number, `| None`: or null);
its check says which values of that kind are allowed. Plain Python: the model layer uses it too.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from tinytransformer.errors import UserError

_KIND_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    dict: "a mapping",
}


@dataclass(frozen=True)
class Check:
    """`ok(value)` says whether a value (of the field's kind) is allowed; `allowed` says so in words, after
    the kind (">= 1": "an integer >= 1") or, when `whole`, on its own ("'char' or 'simple'")."""

    ok: Callable[[Any], bool]
    allowed: str
    whole: bool = False


def at_least(low: float, note: str = "") -> dict[str, Check]:
    return {"check": Check(lambda v: v >= low, f">= {low}{note and ' ' + note}")}


def in_range(low: float, high: float, low_open: bool = False) -> dict[str, Check]:
    """low <= v < high; `low_open`: low < v."""
    allowed = f"in {'(' if low_open else '['}{low}, {high})"
    return {"check": Check(lambda v: (low < v if low_open else low <= v) and v < high, allowed)}


def one_of(*choices: str, allowed: str | None = None) -> dict[str, Check]:
    """Compared as text, so that precision 32 is '32'."""
    text = " or ".join(repr(c) for c in choices) if len(choices) <= 2 else f"one of {', '.join(choices)}"
    return {"check": Check(lambda v: str(v) in choices, allowed or text, whole=True)}


def matches(pattern: str, allowed: str) -> dict[str, Check]:
    return {"check": Check(lambda v: re.fullmatch(pattern, v) is not None, allowed, whole=True)}


def not_allowed(key: str, value: Any, allowed: str) -> str:
    return f"{key}={value!r} is not allowed: {key} must be {allowed}"


def _is_type(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    if float in kinds and isinstance(value, numbers.Real):
        return True
    return isinstance(value, kinds)


def check_value(key: str, value: Any, kinds: tuple[type, ...], ok: Callable | None, allowed: str) -> None:
    """A UserError unless `value` is of one of `kinds` (float: any real number) and `ok` takes it."""
    if not _is_type(value, kinds) or (ok is not None and not ok(value)):
        raise UserError(not_allowed(key, value, allowed))


def _kinds(hint: Any) -> tuple[tuple[type, ...], bool]:
    """(The types a field annotated `hint` takes, whether it takes None too)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    members = typing.get_args(hint) if union else (hint,)
    kinds = tuple(typing.get_origin(m) or m for m in members if m is not type(None))
    return kinds, type(None) in members


class FieldRule(NamedTuple):
    kinds: tuple[type, ...]  # the types a value may have
    ok: Callable[[Any], bool] | None  # which values of those types are allowed (None: all)
    allowed: str  # the same, in words
    optional: bool  # None is allowed too


def rule(schema: type, name: str) -> FieldRule:
    """What the field `name` of the dataclass `schema` allows, from its type and check."""
    kinds, optional = _kinds(typing.get_type_hints(schema)[name])
    check: Check | None = next(f for f in dataclasses.fields(schema) if f.name == name).metadata.get("check")
    if check is not None and check.whole:
        allowed = check.allowed
    else:  # a field holding a dataclass holds a mapping
        allowed = _KIND_NAMES.get(kinds[0], "a mapping") + (f" {check.allowed}" if check is not None else "")
    return FieldRule(kinds, check.ok if check else None, allowed + (" or null" if optional else ""), optional)


def check_fields(schema: type, values: Mapping[str, Any], prefix: str, closed: bool = True) -> None:
    """A UserError for the first of `values` (plain data, e.g. the resolved `data` node) that the dataclass
    `schema` does not allow, and, if `closed`, for a key that is none of its fields. Fields absent from
    `values` take their defaults."""
    hints = typing.get_type_hints(schema)
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in hints:
            if closed:
                raise UserError(unknown_key_line(schema, key, repr(value)))
            continue
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, Mapping):
            check_fields(hints[name], value, key)
            continue
        field_rule = rule(schema, name)
        if not (value is None and field_rule.optional):
            check_value(key, value, field_rule.kinds, field_rule.ok, field_rule.allowed)


def unknown_key_line(schema: type, key: str, given: str | None) -> str:
    """A key that is no field of `schema` (the dataclass of the node holding it), the value `given` to it
    (as written, or None: not known), and the nearest field."""
    names = [f.name for f in dataclasses.fields(schema)]
    parent, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, names, n=1)
    hint = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""
    value = f"={given}" if given is not None else ""
    return f"{key}{value}: no such config key{hint}; {parent or 'the config'} takes only {', '.join(names)}"
