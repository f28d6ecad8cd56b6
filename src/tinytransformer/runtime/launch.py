"""One run on several processes: who started them (Lightning, torchrun, SLURM) and what each one needs.

Light on purpose (no Lightning import): the command line uses it before the trainer loads. We start no
processes ourselves: Lightning (`ddp`, `ddp_spawn`), torchrun or SLURM does, and PyTorch's DDP joins them.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tinytransformer.errors import UserError
from tinytransformer.runtime.runs import quoted

# Strategies for which Lightning starts ranks 1..N-1 by running this command line again.
RELAUNCHING_STRATEGIES = ("ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false")
# Ranks other than 0 write no .hydra/ and no log file: one run dir, written by rank 0.
QUIET_RANK_OVERRIDES = [
    "hydra.output_subdir=null",
    "~hydra.job_logging.handlers.file",
    "hydra.job_logging.root.handlers=[console]",
]


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def relaunched_by_lightning() -> bool:
    """A rank > 0 that Lightning's `ddp` started by running the (already complete) command line again."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 and not under_torchrun()


def is_rank_zero() -> bool:
    """Whether this process is global rank 0 (or the only process), as its launcher's variables say."""
    names = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")
    return all(int(os.environ.get(name, "0")) == 0 for name in names)


def relaunches_command(trainer: DictConfig) -> bool:
    """Whether Lightning would start the other ranks by re-running this command (strategy ddp, or auto
    on several devices)."""
    strategy = str(trainer.get("strategy", "auto"))
    if strategy in RELAUNCHING_STRATEGIES or strategy.startswith(("fsdp", "deepspeed")):
        return True
    several = str(trainer.get("devices", 1)) != "1" or int(trainer.get("num_nodes", 1)) > 1
    return strategy == "auto" and several


def check_launch(cfg: DictConfig, multirun: bool) -> None:
    """Refuse launch settings that cannot work, before any run dir is made."""
    slurm = (OmegaConf.select(cfg, "hydra.launcher._target_", default="") or "").endswith("SlurmLauncher")
    if slurm and not multirun:
        raise UserError("hydra/launcher=slurm submits jobs only under -m (multirun): add -m to the command")
    devices = cfg.trainer.devices
    if slurm and not (isinstance(devices, int) and devices >= 1):
        raise UserError(
            f"trainer.devices={devices}: under hydra/launcher=slurm it is the number of GPUs (and tasks) "
            "per node; set trainer.devices=<N>"
        )
    if multirun and not slurm and not under_torchrun() and relaunches_command(cfg.trainer):
        raise UserError(
            f"trainer.strategy={cfg.trainer.get('strategy', 'auto')} with -m: Lightning starts the other "
            "ranks by re-running this command, and each copy would run the whole sweep (Lightning#11300). "
            "For sweeps use trainer.strategy=ddp_spawn, torchrun (torchrun --nproc_per_node=N scripts/train.py "
            "-m ...), or SLURM (-m hydra/launcher=slurm)"
        )


def torchrun_overrides(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """Under torchrun, every process composes its own `${now:...}` run dir: all take rank 0's.

    Rank 0 publishes its run and sweep dirs in torchrun's key-value store (the one its processes meet in);
    the other ranks read them and write no .hydra/ or log file of their own.
    """
    given = {o.split("=", 1)[0] for o in overrides}
    dirs = {key: str(OmegaConf.select(cfg, key)) for key in ("hydra.run.dir", "hydra.sweep.dir")}
    dirs = {key: value for key, value in dirs.items() if key not in given}
    rank_zero = is_rank_zero()
    if dirs:
        store = _torchrun_store(is_master=rank_zero)
        for key in dirs:
            if rank_zero:
                store.set(f"tinytransformer/{key}", dirs[key])
            else:
                dirs[key] = store.get(f"tinytransformer/{key}").decode()
    shared = [f"{key}={quoted(value)}" for key, value in dirs.items()]
    return shared if rank_zero else [*shared, *QUIET_RANK_OVERRIDES]


def _torchrun_store(is_master: bool) -> Any:
    """A client of torchrun's store (or, without torchrun's agent store, rank 0 hosts it as DDP would)."""
    from torch.distributed import TCPStore

    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    return TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=is_master and not agent_store,
        timeout=timedelta(minutes=5),
        multi_tenant=True,
    )


def launcher_world() -> tuple[int, int] | None:
    """(processes per node, nodes) when torchrun started the processes, else None."""
    if not under_torchrun():
        return None
    per_node = int(os.environ["LOCAL_WORLD_SIZE"])
    return per_node, int(os.environ["WORLD_SIZE"]) // per_node
