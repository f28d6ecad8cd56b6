"""Command-line overrides: parsed (values Hydra's lexer refuses unquoted are quoted for it), composed like
Hydra composes them, and every composition error turned into one line that names the override and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path

from tinytransformer.errors import UserError
from tinytransformer.runtime.config import register_schemas
from tinytransformer.runtime.runs import quoted

_HYDRA_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--shell-completion", "-sc")
_ONE_RUN_FLAGS = ("--cfg", "-c", "--info", "--shell-completion", "-sc")  # Hydra refuses them with -m


def compose_error_line(err: Exception, overrides: list[str], config_dir: Path) -> str:
    """Hydra's multi-line composition errors, as one line that names the override and the fix."""
    text = str(err)
    if line := _schema_error_line(err, overrides):
        where = re.match(r"In '([^']+)'", text)  # set by a YAML (else by an override)
        return line + (f" (set in {where.group(1)})" if where else "")
    if m := re.search(r"Could not override '([^']+)'", text):
        key = m.group(1)
        value = _given(overrides, key) or "?"
        hint = _close_keys(key, config_dir, overrides)
        return f"{key}={value}: no such config key{hint}; to add a new key on purpose use +{key}={value}"
    if m := re.search(r"Could not delete from config. '([^']+)' does not exist", text):
        key = m.group(1)
        hint = _close_keys(key, config_dir, overrides)
        return f"~{key}: no such config key to delete{hint}; drop the override (see the keys with --cfg job)"
    if m := re.search(r"Could not find '([^']+)/([^']+)'", text):
        group, option = m.groups()
        options = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        return f"{group}={option}: no such option in conf/{group}/; available: {', '.join(options)}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines[:2])


def _schema_error_line(err: Exception, overrides: list[str]) -> str | None:
    """validate's line for what a schema node (config.register_schemas) refused at compose time: a value of
    the wrong type, or a key that is none of its fields."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    from tinytransformer.checks import not_allowed, rule, unknown_key_line

    refusals = (ConfigAttributeError, ConfigKeyError, ValidationError)
    cause = err.__cause__ or err.__context__
    while cause is not None and not isinstance(cause, refusals):
        cause = cause.__cause__ or cause.__context__
    schema, key = getattr(cause, "object_type", None), getattr(cause, "full_key", None)
    if not (key and dataclasses.is_dataclass(schema)):
        return None
    name = key.rpartition(".")[2]
    if not isinstance(cause, ValidationError):  # no such key
        return unknown_key_line(schema, key, _given(overrides, key))
    if name in {f.name for f in dataclasses.fields(schema)}:
        return not_allowed(key, cause.value, rule(schema, name).allowed)
    return None


def _given(overrides: list[str], key: str) -> str | None:
    """The value `overrides` give `key`, as written."""
    return next((o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=")[0] == key), None)


def _close_keys(key: str, config_dir: Path, overrides: list[str]) -> str:
    from hydra import compose, initialize_config_dir

    parent, _, leaf = key.rpartition(".")
    good = [o for o in overrides if not o.startswith(key)]
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(
                config_name="train", overrides=[o for o in good if "=" in o and "." not in o.split("=")[0]]
            )
        from omegaconf import OmegaConf

        node = OmegaConf.select(cfg, parent) if parent else cfg
        matches = difflib.get_close_matches(leaf, list(node.keys()), n=1) if node is not None else []
    except Exception:
        matches = []
    return f" (did you mean {parent + '.' if parent else ''}{matches[0]}?)" if matches else ""


def parse_args(argv: list[str]) -> tuple[list[str], bool, bool]:
    """(overrides, multirun, hydra_flag) of a command line."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    hydra_flag = any(a.split("=")[0] in _HYDRA_FLAGS for a in argv)
    if multirun and (flag := next((a for a in argv if a.split("=")[0] in _ONE_RUN_FLAGS), None)):
        raise UserError(f"{flag} with -m: Hydra shows one run's config at a time; drop -m, one value per key")
    overrides = [quote_if_needed(a) for a in argv if not a.startswith("-")]
    return overrides, multirun, hydra_flag


def quote_if_needed(override: str) -> str:
    """An override as given if Hydra parses it, else quoted when that parses (e.g. `prompt=привет`: Hydra's
    lexer takes non-ASCII letters only inside quotes); otherwise as given, for the error to name it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    key, sep, value = override.partition("=")
    for candidate in [override, f"{key}={quoted(value)}"] if sep and value else [override]:
        try:
            parser.parse_override(candidate)
            return candidate
        except Exception:
            pass
    return override


def compose_config(config_dir: Path, config_name: str, overrides: list[str], with_hydra: bool):
    """Compose like Hydra does (the first value of each sweep); errors become one-line UserErrors."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except Exception as err:
            reason = str(err).splitlines()[0]
            raise UserError(f"{override}: bad override syntax ({reason}); {_syntax_fix(override)}") from None
    parsed = parser.parse_overrides(overrides)
    single = [_first_value(o) if o.is_sweep_override() else o.input_line for o in parsed]
    register_schemas()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return compose(config_name=config_name, overrides=single, return_hydra_config=with_hydra)
    except Exception as err:
        raise UserError(compose_error_line(err, overrides, config_dir)) from None


def _syntax_fix(override: str) -> str:
    """What to write instead; quote_if_needed has already tried quoting the value."""
    key = override.partition("=")[0].lstrip("+~")
    if "=" not in override or not re.fullmatch(r"[\w./@-]+", key):
        return "write key=value, with a key such as model.dropout"
    return f"quote the value for the shell and for Hydra: \"{key}='<value>'\" (\\' for a quote inside it)"


def _first_value(override) -> str:
    """`key=<one value of the sweep>`, to check the config with: an interval (a search space, which cannot
    be enumerated) by its lower end."""
    from hydra.core.override_parser.types import IntervalSweep

    sweep = override.value()
    first = sweep.start if isinstance(sweep, IntervalSweep) else next(iter(override.sweep_string_iterator()))
    return f"{override.get_key_element()}={first}"


def override_value(overrides: list[str], key: str) -> str | None:
    """The value an override list gives `key`, as Hydra parses it (quotes removed), or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for o in overrides:
        if o.split("=", 1)[0] == key and "=" in o:
            value = OverridesParser.create().parse_override(o).value()
            return str(value) if value not in (None, "") else None
    return None
