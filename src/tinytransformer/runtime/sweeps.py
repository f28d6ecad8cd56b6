"""What a sweep varies, and how its jobs are named: by the values of the swept keys alone, short enough for
TensorBoard's tables (conf/hydra/default.yaml's `${sweep_job_name:}`; the HPARAMS tab's swept columns).

Light on purpose (no Lightning import): the job-name resolver runs while Hydra builds each job's dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def job_name(hydra, config_dir: Path) -> str:
    """The name of the sweep job whose Hydra config node is `hydra` (the `${sweep_job_name:}` resolver).
    Config groups are the swept keys that are dirs of `config_dir` or of a file:// config source."""
    sources = [config_dir] + [
        Path(s.path) for s in hydra.runtime.get("config_sources", []) if s.schema == "file"
    ]
    overrides = list(hydra.overrides.task)
    keys = {_key(o) for o in overrides}
    return sweep_job_name(
        hydra.sweep.dir,
        overrides,
        sweeper_params(hydra),
        hydra.job.override_dirname,
        groups=frozenset(k for k in keys if any((source / k).is_dir() for source in sources)),
    )


def sweep_job_name(
    sweep_dir: str,
    job_overrides: list[str],
    sweeper_params: dict[str, Any],
    all_overrides: str,
    max_chars: int = 200,
    groups: frozenset[str] = frozenset(),
) -> str:
    """A sweep job's name: its values of the swept keys, short enough to read where TensorBoard cuts names
    (its HPARAMS table shows about 18 characters): `dropout,seed=2` for `regularization=dropout seed=2`,
    `dropout=0.1,seed=2` for `model.dropout=0.1 seed=2`.

    - A swept config group (one of `groups`) gives its option alone; a dotted key gives its last part,
      unless two swept keys share that part.
    - Swept keys: `swept_keys`. Without any, the name is `all_overrides` (Hydra's override_dirname).
    - A `/` (a swept path) becomes `_`; cut to `max_chars` (file names have a length limit; the job number
      in front keeps names unique).
    """
    swept = swept_keys(sweep_dir, sweeper_params)
    named = sorted(o for o in job_overrides if _key(o) in swept)
    if not named:
        return all_overrides.replace("/", "_")[:max_chars]
    last_parts = [key.rsplit(".", 1)[-1] for key in swept]

    def short(override: str) -> str:
        if "=" not in override:  # `~key`: a deletion
            return override
        key, value = override.split("=", 1)
        bare = key.lstrip("+~")
        if bare in groups:
            return value
        last = bare.rsplit(".", 1)[-1]
        return f"{last if last_parts.count(last) == 1 else bare}={value}"

    return ",".join(short(o) for o in named).replace("/", "_")[:max_chars]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def sweeper_params(hydra) -> dict[str, Any]:
    """The search space of a sweep's Hydra config node `hydra` (hydra.sweeper.params), as plain data; a seed
    sweep (hydra/sweeper=seeds) varies the seed too."""
    from omegaconf import OmegaConf

    params = OmegaConf.to_container(hydra.sweeper.params) if hydra.sweeper.get("params") else {}
    if "max_seeds" in hydra.sweeper:
        params["seed"] = f"1..{hydra.sweeper.max_seeds}"
    return params


def swept_keys(sweep_dir: str, sweeper_params: dict[str, Any]) -> set[str]:
    """The keys a sweep varies: those of hydra.sweeper.params and those given several values on the command
    line (as the sweep's multirun.yaml records them; not every sweeper writes one)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    multirun = Path(sweep_dir) / "multirun.yaml"
    recorded = yaml.safe_load(multirun.read_text()) if multirun.is_file() else None
    command_line = ((recorded or {}).get("hydra") or {}).get("overrides", {}).get("task", [])
    parsed = OverridesParser.create().parse_overrides(list(command_line))
    return {o.key_or_group for o in parsed if o.is_sweep_override()} | set(sweeper_params)
