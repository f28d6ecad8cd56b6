"""The flat hyperparameters a run logs (TensorBoard's HPARAMS tab), derived from its config.

Two kinds of keys, the same in every run of a sweep (TensorBoard builds its columns from the first runs):
- what was trained: corpus, model class and size, optimizer, lr, schedule, steps, precision;
- every regularization value: each key that a YAML in the config's `regularization/` dirs sets, named by its
  override key (`model.dropout`, `callbacks.early_stopping.patience`), and each argument of a regularizer
  that needs code (`regularizers.label_smoothing.smoothing`). A new YAML there adds its keys, with no list to edit; a run
  without one logs it as off (0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from tinytransformer.runtime.config import CONFIG_DIR, to_plain


def flat_hparams(cfg: DictConfig, group_dirs: list[Path] | None = None) -> dict[str, Any]:
    """The run's hparams; `group_dirs`: the `regularization/` config dirs (default: this run's)."""
    values, regularizers = regularization_settings(group_dirs or config_dirs("regularization"))
    return {
        **trained(cfg),
        **{key: _hparam(_select(cfg, key, off=_off(value))) for key, value in sorted(values.items())},
        **regularizer_hparams(cfg, regularizers),
    }


def trained(cfg: DictConfig) -> dict[str, Any]:
    """What was trained; a model class without d_model (etc.) logs 0, so every run logs the same keys."""
    model, optimizer = cfg.model, cfg.optimizer
    return {
        "seed": cfg.seed,
        "corpus": cfg.data.corpus,
        "tokenizer": cfg.data.tokenizer,
        "block_size": cfg.data.block_size,
        "batch_size": cfg.data.batch_size,
        "accumulate_grad_batches": _select(cfg, "trainer.accumulate_grad_batches", off=1),
        "model": _class_name(model._target_),
        "d_model": model.get("d_model", 0),
        "n_heads": model.get("n_heads", 0),
        "n_layers": model.get("n_layers", 0),
        "optimizer": _class_name(optimizer._target_),
        "lr": float(optimizer.get("lr", 0.0)),
        "scheduler": _class_name(cfg.scheduler._target_ or "none"),
        "max_steps": cfg.trainer.max_steps,
        "precision": str(cfg.trainer.precision),
    }


# The config key each of `trained`'s hparams comes from (the others are named by theirs).
TRAINED_FROM = {
    "corpus": "data.corpus",
    "tokenizer": "data.tokenizer",
    "block_size": "data.block_size",
    "batch_size": "data.batch_size",
    "accumulate_grad_batches": "trainer.accumulate_grad_batches",
    "model": "model._target_",
    "d_model": "model.d_model",
    "n_heads": "model.n_heads",
    "n_layers": "model.n_layers",
    "optimizer": "optimizer._target_",
    "lr": "optimizer.lr",
    "scheduler": "scheduler._target_",
    "max_steps": "trainer.max_steps",
    "precision": "trainer.precision",
}


def swept_hparams(names: list[str], swept_keys: set[str]) -> list[str]:
    """The hparams of `names` that a sweep over `swept_keys` varies: those set by a swept key, or by a YAML
    of a swept config group (`regularization=none,dropout` varies every key conf/regularization/ sets)."""
    keys = {key.lstrip("+~") for key in swept_keys}
    for group in [key for key in keys if "." not in key]:
        for directory in config_dirs(group):
            keys |= set(group_settings(directory, group))
    return [
        name
        for name in names
        if any(
            (source := TRAINED_FROM.get(name, name)) == key or source.startswith(f"{key}.") for key in keys
        )
    ]


def group_settings(directory: Path, group: str) -> dict[str, Any]:
    """Each dotted key (of the whole config) that a YAML in a config group's `directory` sets."""
    settings: dict[str, Any] = {}
    for file in sorted(directory.glob("*.yaml")):
        text = file.read_text()
        entries = yaml.safe_load(text) or {}
        entries.pop("defaults", None)
        prefix = "" if "@package _global_" in text.partition("\n")[0] else f"{group}."
        settings.update(_leaves(entries, prefix))
    return settings


def regularization_settings(group_dirs: list[Path]) -> tuple[dict[str, Any], dict[str, dict]]:
    """(Each dotted key the YAMLs in `group_dirs` set, with its value there; the specs of the regularizers
    that need code, by name), from every YAML in those dirs."""
    values: dict[str, Any] = {}
    regularizers: dict[str, dict] = {}
    for group in group_dirs:
        for file in sorted(group.glob("*.yaml")):
            entries = yaml.safe_load(file.read_text()) or {}
            specs = entries.pop("regularizers", None) or {}
            regularizers.update({name: spec for name, spec in specs.items() if isinstance(spec, dict)})
            entries.pop("defaults", None)
            values.update(_leaves(entries))
    return values, regularizers


def regularizer_hparams(cfg: DictConfig, known: dict[str, dict]) -> dict[str, Any]:
    """`regularizers.<name>.<argument>` of the regularizers this run uses (their values) and of the others `known`
    (off: 0)."""
    used = to_plain(cfg.regularizers) if cfg.get("regularizers") else {}
    params = {}
    for name, spec in sorted({**known, **used}.items()):
        for argument, value in spec.items():
            if not argument.startswith("_"):
                params[f"regularizers.{name}.{argument}"] = _hparam(value if name in used else _off(value))
    return params


def config_dirs(group: str) -> list[Path]:
    """The dirs of a config group on this run's config search path (conf/, hydra.searchpath)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # composed without Hydra's run (tests): the repo's conf/
        return [CONFIG_DIR / group]
    sources = HydraConfig.get().runtime.config_sources
    return [Path(s.path) / group for s in sources if s.schema == "file" and (Path(s.path) / group).is_dir()]


def _leaves(node: dict, prefix: str = "") -> dict[str, Any]:
    leaves = {}
    for key, value in node.items():
        if isinstance(value, dict):
            leaves.update(_leaves(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def _select(cfg: DictConfig, key: str, off: Any) -> Any:
    value = OmegaConf.select(cfg, key, default=None)
    return off if value is None else value


def _class_name(target: Any) -> str:
    return str(target).rpartition(".")[2]


def _off(value: Any) -> Any:
    """A setting's value when it is not used: 0 of its type."""
    if isinstance(value, bool):
        return False
    return 0 if isinstance(value, int | float) else ""


def _hparam(value: Any) -> Any:
    return value if isinstance(value, bool | int | float | str) else str(value)


def sweep_of_run(cfg: DictConfig) -> dict[str, Any] | None:
    """In a sweep job: {"dir": the sweep dir, "varied": the hparams the sweep varies}; else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from tinytransformer.runtime.sweeps import sweeper_params, swept_keys

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra = HydraConfig.get()
    varied = swept_hparams(list(flat_hparams(cfg)), swept_keys(hydra.sweep.dir, sweeper_params(hydra)))
    return {"dir": hydra.sweep.dir, "varied": varied}


def register_resolver() -> None:
    """conf/callbacks/hparams.yaml's `${run_hparams:}` (the run's flat_hparams) and `${run_sweep:}`
    (sweep_of_run), and conf/logger/'s `${run_name:}` (the run dir's name)."""
    OmegaConf.register_new_resolver("run_hparams", lambda *, _root_: flat_hparams(_root_), replace=True)
    OmegaConf.register_new_resolver("run_sweep", lambda *, _root_: sweep_of_run(_root_), replace=True)
    OmegaConf.register_new_resolver(
        "run_name", lambda *, _root_: Path(_root_.paths.output_dir).name, replace=True
    )
