"""Command-line entry points: Hydra `key=value` overrides in, one summary (or one error line) out.

Before Hydra creates a run dir, every override is composed and validated here ("pre-flight"), so a typo
or an out-of-range value costs one line and exit code 2, and never leaves a run dir or touches an old one.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path

from tinytransformer import distributed, runs
from tinytransformer.errors import EXIT_USER_ERROR, UserError

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "conf"
_HYDRA_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--shell-completion", "-sc")


def register_resolvers() -> None:
    """`${sweep_job_name:}` in conf/hydra/default.yaml: sweep jobs named by what differs between them."""
    from omegaconf import OmegaConf

    def sweep_job_name(*, _root_) -> str:
        hydra = _root_.hydra
        params = OmegaConf.to_container(hydra.sweeper.params) if hydra.sweeper.get("params") else {}
        return runs.sweep_job_name(
            hydra.sweep.dir, list(hydra.overrides.task), params, hydra.job.override_dirname
        )

    OmegaConf.register_new_resolver("sweep_job_name", sweep_job_name, replace=True)


# At import: a sweep job may run in a process that only unpickles the task function (submitit).
register_resolvers()


def project_env() -> None:
    """Paths in conf/ are absolute, under PROJECT_ROOT (the repo by default), never the working dir."""
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def compose_error_line(err: Exception, overrides: list[str], config_dir: Path) -> str:
    """Hydra's multi-line composition errors, as one line that names the override and the fix."""
    text = str(err)
    if m := re.search(r"Could not override '([^']+)'", text):
        key = m.group(1)
        value = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=")[0] == key), "?")
        hint = _close_keys(key, config_dir, overrides)
        return f"{key}={value}: no such config key{hint}; to add a new key on purpose use +{key}={value}"
    if m := re.search(r"Could not find '([^']+)/([^']+)'", text):
        group, option = m.groups()
        options = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        return f"{group}={option}: no such option in conf/{group}/; available: {', '.join(options)}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines[:2])


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
    overrides = [a for a in argv if not a.startswith("-")]
    return overrides, multirun, hydra_flag


def preflight(config_dir: Path, config_name: str, overrides: list[str], multirun: bool):
    """Compose (first value of each sweep) and validate; returns the composed config with `hydra`."""
    cfg = compose_config(config_dir, config_name, overrides, with_hydra=True)
    if not multirun:
        from tinytransformer.config import validate

        validate(cfg)
    return cfg


def compose_config(config_dir: Path, config_name: str, overrides: list[str], with_hydra: bool):
    """Compose like Hydra does (the first value of each sweep); errors become one-line UserErrors."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as err:
        raise UserError(f"bad override syntax: {str(err).splitlines()[0]}") from None
    single = [_first_value(o) if o.is_sweep_override() else o.input_line for o in parsed]
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return compose(config_name=config_name, overrides=single, return_hydra_config=with_hydra)
    except Exception as err:
        raise UserError(compose_error_line(err, overrides, config_dir)) from None


def _first_value(override) -> str:
    first = next(iter(override.sweep_string_iterator()))
    return f"{override.get_key_element()}={first}"


def override_value(overrides: list[str], key: str) -> str | None:
    for o in overrides:
        if o.split("=", 1)[0] == key and "=" in o:
            return o.split("=", 1)[1] or None
    return None


def train_main() -> None:
    """`python scripts/train.py [key=value ...]`, `-m` for sweeps, `resume=<run dir>` to continue a run."""
    project_env()
    argv = sys.argv[1:]
    if distributed.relaunched_by_lightning():  # a DDP rank > 0: Lightning completed its command line
        sys.argv = [sys.argv[0], *argv, *distributed.QUIET_RANK_OVERRIDES]
        hydra_train()
        return
    overrides, multirun, hydra_flag = parse_args(argv)
    config_dir, config_name, extra = CONFIG_DIR, "train", []
    try:
        resume = override_value(overrides, "resume")
        if resume:
            run_dir = runs.check_resumable(resume, multirun)
            runs.check_resume_overrides(overrides, CONFIG_DIR)
            config_dir, config_name = run_dir / ".hydra", "config"
            extra = runs.resume_overrides(run_dir, CONFIG_DIR)
        if not hydra_flag:
            cfg = preflight(config_dir, config_name, overrides + extra, multirun)
            multirun = multirun or str(cfg.hydra.get("mode")).endswith("MULTIRUN")  # a sweep set by a config
            distributed.check_launch(cfg, multirun)
            if not multirun and not resume and distributed.is_rank_zero():
                runs.refuse_existing_run(cfg.hydra.run.dir)
            if distributed.under_torchrun():  # one run dir for all ranks, written by rank 0
                extra += distributed.torchrun_overrides(cfg, overrides + extra)
    except UserError as err:
        fail(str(err))
    config = [f"--config-path={config_dir}", f"--config-name={config_name}"]
    if hydra_flag:
        sys.argv = [sys.argv[0], *argv, *extra, *config]
    else:  # flags first: Lightning's ddp appends overrides when it re-runs this command for other ranks
        flags = [a for a in argv if a.startswith("-")]
        sys.argv = [sys.argv[0], *flags, *config, *overrides, *extra]
    hydra_train()


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


def generate_main() -> None:
    """`python scripts/generate.py ckpt_path=<run dir or .ckpt> prompt="The cat" max_new_tokens=200`."""
    from tinytransformer.inference import generate_samples

    project_env()
    try:
        cfg = compose_cli("generate", sys.argv[1:])
        samples = generate_samples(cfg)
    except UserError as err:
        fail(str(err))
    for i, text in enumerate(samples):
        if len(samples) > 1:
            print(f"--- sample {i + 1} ---")
        print(text)


def evaluate_main() -> None:
    """`python scripts/evaluate.py ckpt_path=<run dir or .ckpt>`: prints one line per metric, as JSON too."""
    import json

    from tinytransformer.inference import evaluate_checkpoint

    project_env()
    try:
        cfg = compose_cli("evaluate", sys.argv[1:])
        results = evaluate_checkpoint(cfg)
    except UserError as err:
        fail(str(err))
    print(json.dumps(results, indent=2))


def _hydra_train(cfg) -> float | None:
    """The Hydra task: train one job; in a sweep, a failing job is recorded and the sweep goes on."""
    import logging
    import signal
    import traceback

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from tinytransformer.callbacks.resume import RunInterrupted
    from tinytransformer.module import NonFiniteLoss
    from tinytransformer.training import train

    log = logging.getLogger("tinytransformer")
    hc = HydraConfig.get()
    output_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    rank_zero = distributed.is_rank_zero()
    if not rank_zero:  # one train.log, rank 0's (SLURM starts every task with Hydra's log handlers)
        _drop_file_handlers(logging.getLogger())
    ckpt = str(Path(cfg.resume) / "checkpoints" / runs.LAST) if cfg.get("resume") else None
    if multirun and not ckpt and (last := runs.checkpoint_to_continue(output_dir)):
        ckpt = str(last)  # a requeued SLURM job: same run dir, continue where it stopped
        log.info(f"continuing {output_dir} from {last}")
    if not multirun and rank_zero:
        log.info(OmegaConf.to_yaml(cfg, resolve=False))
    try:
        results = train(cfg, output_dir, ckpt_path=ckpt)
    except RunInterrupted as err:
        if rank_zero:
            log.warning(f"\n{err}. Resume with: python scripts/train.py resume={output_dir}")
        if err.stop_reason == "SIGUSR2":  # SLURM's time-limit notice: submitit's handler requeues the job
            signal.raise_signal(signal.SIGUSR2)
        sys.exit(err.exit_code)
    except (UserError, NonFiniteLoss) as err:
        if not cfg.get("resume") or isinstance(err, NonFiniteLoss):  # a refused resume is no failed run
            runs.record_failure(output_dir, str(err))
        if not multirun:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR if isinstance(err, UserError) else 1)
        log.error(f"job {hc.job.num} failed: {err}")
        return None
    except Exception as err:
        if not multirun:
            raise
        runs.record_failure(output_dir, f"{type(err).__name__}: {err}")
        log.error(f"job {hc.job.num} failed:\n{traceback.format_exc()}")
        return None
    return results.get("best_val_loss")  # what a sweeper (e.g. Optuna) minimises


def _drop_file_handlers(logger) -> None:
    import logging

    for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(handler)
        handler.close()


def hydra_train() -> None:
    import hydra

    hydra.main(version_base="1.3", config_path=None, config_name=None)(_hydra_train)()
