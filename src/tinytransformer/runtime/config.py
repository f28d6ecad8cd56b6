"""Where configs live (ROOT, CONFIG_DIR) and how they enter Hydra: the schema (schema.py, and data/config.py
for `data`) registered in Hydra's ConfigStore, so Hydra refuses a mistyped key or a value of the wrong type
at compose time (overrides.compose_error_line words it as preflight.validate does). Every other check of
a composed config is preflight.py's."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tinytransformer.data.config import DataConfig
from tinytransformer.runtime.schema import RunConfig, TrainerConfig

ROOT = Path(__file__).resolve().parents[3]  # the repository: conf/, scripts/
CONFIG_DIR = ROOT / "conf"

SCHEMA = "train_schema"  # the first entry of conf/train.yaml's defaults list


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
