"""Configs saved by older versions (a resumed run dir's .hydra/config.yaml), brought up to date in place."""

from __future__ import annotations

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from tinytransformer.config import CONFIG_DIR
from tinytransformer.specs import current_target

# 2: every callback is in conf/callbacks/, and one val history decides the best checkpoint and early
# stopping. Before, configs had no config_version, the run's records (metrics.json, hparams, lr, last.ckpt,
# progress bar, process setup) were built in code, and Lightning's ModelCheckpoint and EarlyStopping each
# tracked the best val loss of their own.
CONFIG_VERSION = 2
CALLBACKS_DIR = CONFIG_DIR / "callbacks"


def upgrade(cfg: DictConfig) -> None:
    """`cfg` as today's code reads it: moved module paths renamed, missing record callbacks added."""
    upgrade_targets(cfg)
    if cfg.get("config_version") is None:
        with open_dict(cfg):
            cfg.callbacks = cfg.get("callbacks") or {}
            for name in record_callbacks():
                cfg.callbacks[name] = callback_yaml(name)
            _replace_lightning_rules(cfg.callbacks)
            cfg.config_version = CONFIG_VERSION


def _replace_lightning_rules(callbacks: DictConfig) -> None:
    """Lightning's ModelCheckpoint and EarlyStopping of a version-1 config, as today's YAMLs (patience and
    min_delta kept)."""
    for name, spec in list(callbacks.items()):
        target = spec.get("_target_") if spec is not None else None
        if target == "lightning.pytorch.callbacks.ModelCheckpoint":
            del callbacks[name]
            callbacks.best_checkpoint = callback_yaml("best_checkpoint")
        elif target == "lightning.pytorch.callbacks.EarlyStopping":
            callbacks[name] = callback_yaml("early_stopping")
            callbacks[name].patience, callbacks[name].min_delta = spec.patience, spec.min_delta


def callback_yaml(name: str) -> DictConfig:
    """The spec conf/callbacks/<name>.yaml holds for callback `name`."""
    return OmegaConf.load(CALLBACKS_DIR / f"{name}.yaml")[name]


def upgrade_targets(node: DictConfig | ListConfig) -> None:
    """Every `_target_` under `node` named as today, in place: a run dir saved before a module moved names
    its old path (resuming it recomposes that saved config)."""
    children = node.items_ex(resolve=False) if isinstance(node, DictConfig) else enumerate(node)
    for key, value in list(children):
        if key == "_target_" and isinstance(value, str):
            node[key] = current_target(value)
        elif isinstance(value, (DictConfig, ListConfig)):
            upgrade_targets(value)


def record_callbacks() -> list[str]:
    """The callbacks conf/callbacks/minimal.yaml lists: those that were built in code before version 2."""
    defaults = yaml.safe_load((CALLBACKS_DIR / "minimal.yaml").read_text())["defaults"]
    return [name for name in defaults if name != "_self_"]
