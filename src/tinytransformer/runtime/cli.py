"""Command-line entry points: Hydra `key=value` overrides in, one summary (or one error line) out.

Before Hydra creates a run dir, every override is composed and validated here ("pre-flight"), so a typo
or an out-of-range value costs one line and exit code 2, and never leaves a run dir or touches an old one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from tinytransformer.errors import EXIT_OS_ERROR, EXIT_USER_ERROR, UserError, os_error_line
from tinytransformer.runtime import launch, runs
from tinytransformer.runtime.config import CONFIG_DIR, ROOT
from tinytransformer.runtime.job import train_job
from tinytransformer.runtime.overrides import compose_config, override_value, parse_args


def project_env() -> None:
    """Paths in conf/ are absolute, under PROJECT_ROOT (the repo by default), never the working dir."""
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def fail(message: str, exit_code: int = EXIT_USER_ERROR) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(exit_code)


def claim_output_dir(cfg, multirun: bool) -> None:
    """Make the run dir (locked: one writer) or the sweep dir (checked writable) before Hydra does, so a
    read-only or full disk, a run dir in use, or a sweep dir another version wrote costs one line."""
    if multirun:
        runs.check_sweep_layout(Path(cfg.hydra.sweep.dir))
        runs.check_writable(Path(cfg.hydra.sweep.dir))
    else:
        runs.lock_run_dir(cfg.hydra.run.dir)


def preflight(config_dir: Path, config_name: str, overrides: list[str], multirun: bool):
    """Compose (first value of each sweep) and validate; returns the composed config with `hydra`."""
    cfg = compose_config(config_dir, config_name, overrides, with_hydra=True)
    if not multirun:
        from tinytransformer.runtime.preflight import check

        check(cfg)  # values first (a typo costs no torch import), then every class and its arguments
    return cfg


def train_main() -> None:
    """`python scripts/train.py [key=value ...]`, `-m` for sweeps, `resume=<run dir>` to continue a run."""
    project_env()
    argv = sys.argv[1:]
    if launch.relaunched_by_lightning():  # a DDP rank > 0: Lightning completed its command line
        sys.argv = [sys.argv[0], *argv, *launch.QUIET_RANK_OVERRIDES]
        hydra_train()
        return
    config_dir, config_name, extra, cfg = CONFIG_DIR, "train", [], None
    try:
        overrides, multirun, hydra_flag = parse_args(argv)
        resume = override_value(overrides, "resume")
        if resume:
            run_dir = runs.check_resumable(resume, multirun)
            runs.check_resume_overrides(overrides, CONFIG_DIR)
            if launch.is_rank_zero():  # before Hydra writes its .hydra/resume-<time>/ there
                runs.lock_run_dir(run_dir)
            config_dir, config_name = runs.run_config_dir(run_dir), "config"
            extra = runs.resume_overrides(run_dir, CONFIG_DIR)
        if not hydra_flag:
            cfg = preflight(config_dir, config_name, overrides + extra, multirun)
            multirun = multirun or str(cfg.hydra.get("mode")).endswith("MULTIRUN")  # a sweep set by a config
            launch.check_launch(cfg, multirun)
            if not multirun and not resume and launch.is_rank_zero():
                runs.refuse_existing_run(cfg.hydra.run.dir)
            if launch.under_torchrun():  # one run dir for all ranks, written by rank 0
                extra += launch.torchrun_overrides(cfg, overrides + extra)
            else:  # Hydra would compose `${now:...}` again: keep the dir that was checked here
                extra += runs.pinned_dirs(cfg, overrides + extra)
            if launch.is_rank_zero():
                claim_output_dir(cfg, multirun)
    except UserError as err:
        fail(str(err), err.exit_code)
    except OSError as err:
        fail(os_error_line(err), EXIT_OS_ERROR)
    config = [f"--config-path={config_dir}", f"--config-name={config_name}"]
    if hydra_flag:
        sys.argv = [sys.argv[0], *argv, *extra, *config]
    else:  # flags first: Lightning's ddp appends overrides when it re-runs this command for other ranks
        flags = [a for a in argv if a.startswith("-")]
        sys.argv = [sys.argv[0], *flags, *config, *overrides, *extra]
    hydra_train(cfg)


def compose_cli(config_name: str, argv: list[str]):
    """Compose conf/<config_name>.yaml with command-line overrides, without Hydra's run dir or logging."""
    overrides, multirun, hydra_flag = parse_args(argv)
    if multirun or hydra_flag:
        raise UserError(f"{config_name}.py takes key=value overrides only (no -m or Hydra flags)")
    cfg = compose_config(CONFIG_DIR, config_name, overrides, with_hydra=False)
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"{missing[0]}: required; pass {missing[0]}=<value> (e.g. a run dir)")
    return cfg


def run_checkpoint_command(config_name: str, command):
    """`command(cfg)` for conf/<config_name>.yaml and the command line's overrides; a user error or an
    OS error (e.g. the token cache of the data it evaluates on) ends the process in one line."""
    project_env()
    try:
        return command(compose_cli(config_name, sys.argv[1:]))
    except UserError as err:
        fail(str(err), err.exit_code)
    except OSError as err:
        fail(os_error_line(err), EXIT_OS_ERROR)


def generate_main() -> None:
    """`python scripts/generate.py ckpt_path=<run dir or .ckpt> prompt="The cat" max_new_tokens=200`."""
    from tinytransformer.runtime.inference import generate_samples

    samples = run_checkpoint_command("generate", generate_samples)
    for i, text in enumerate(samples):
        if len(samples) > 1:
            print(f"--- sample {i + 1} ---")
        print(text)


def evaluate_main() -> None:
    """`python scripts/evaluate.py ckpt_path=<run dir or .ckpt>`: prints one line per metric, as JSON too."""
    import json

    from tinytransformer.runtime.inference import evaluate_checkpoint

    print(json.dumps(run_checkpoint_command("evaluate", evaluate_checkpoint), indent=2))


def hydra_train(preflight_cfg=None) -> None:
    """Hydra's main on sys.argv; `preflight_cfg`: the config preflight composed from the same overrides."""
    import hydra

    with known_mode(preflight_cfg):
        hydra.main(version_base="1.3", config_path=None, config_name=None)(train_job)()


@contextmanager
def known_mode(preflight_cfg) -> Iterator[None]:
    """Hydra's main composes the whole config once more only to read hydra.mode (Hydra.get_mode, ~0.2 s,
    as long as a tiny run's training): preflight has composed the same overrides, so Hydra is told its
    value. hydra.mode comes from the configs alone (experiment=regularization sets MULTIRUN)."""
    from hydra._internal.hydra import Hydra

    if preflight_cfg is None:  # a Hydra flag (--cfg, ...), or a DDP rank Lightning started
        yield
        return
    get_mode, mode = Hydra.get_mode, preflight_cfg.hydra.get("mode")
    Hydra.get_mode = lambda self, config_name, overrides: mode
    try:
        yield
    finally:
        Hydra.get_mode = get_mode
