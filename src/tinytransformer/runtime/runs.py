"""Run directories: where results go, resuming a run in place, never writing over an earlier run.

Light on purpose (no Lightning import): the command line checks run dirs before it loads the trainer.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import shutil
import socket
import time
from datetime import datetime
from pathlib import Path

import yaml

from tinytransformer.errors import UserError
from tinytransformer.files import LAST, write_atomic, write_json_atomic
from tinytransformer.runtime.config import CONFIG_DIR

FAILED_FILE = "failed.json"  # {"status": "failed", "reason": ...}: a job that could not finish
METRICS = "metrics.json"  # the run's summary
LOCK = "run.lock"  # held (an OS lock) by the process that writes the run dir
# metrics.json's `status`: a run that is going (or was killed: then no process holds its lock), one stopped
# by a signal (resumable), one that raised, and one whose fit, final validation and test all completed.
RUNNING, INTERRUPTED, FAILED, FINISHED = "running", "interrupted", "failed", "finished"


def record_failure(output_dir: Path, reason: str) -> None:
    write_json_atomic(output_dir / FAILED_FILE, {"status": FAILED, "reason": reason})


def clear_failure(output_dir: Path) -> None:
    """A run continued after a failure (resumed, or requeued) is no longer a failed run."""
    (Path(output_dir) / FAILED_FILE).unlink(missing_ok=True)


def check_resumable(path: str, multirun: bool) -> Path:
    run_dir = Path(path).expanduser().resolve()
    if multirun:
        raise UserError("resume= continues one run; it cannot be combined with -m (multirun)")
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise UserError(
            f"resume={path}: not a run dir (no .hydra/config.yaml); pass a dir under logs/train/runs/"
        )
    if not (run_dir / "checkpoints" / LAST).is_file():
        raise UserError(
            f"resume={path}: the run has no checkpoints/{LAST} to resume from; start a new run instead"
        )
    check_layout(run_dir, f"resume={path}")
    return run_dir


@functools.cache
def _config_version() -> int:
    """The layout this version reads (conf/train.yaml's config_version), read once per process."""
    return yaml.safe_load((CONFIG_DIR / "train.yaml").read_text())["config_version"]


def check_layout(run_dir: Path, key: str, new: str = "a new run") -> None:
    """A UserError for a run dir written by a version of tinytransformer whose layout this one does not read
    (conf/train.yaml's config_version says which it reads). Nothing in the run dir is changed."""
    current = _config_version()
    config = run_dir / ".hydra" / "config.yaml"
    try:
        saved = yaml.safe_load(config.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        problem = str(err).splitlines()[0]
        raise UserError(
            f"{key}: {config} cannot be read ({problem}); start {new} (nothing in it was changed)"
        ) from None
    saved = saved.get("config_version") if isinstance(saved, dict) else None
    if saved != current:
        raise UserError(
            f"{key}: written by another version of tinytransformer (config_version {saved}; this one reads "
            f"{current}); continue it with the version that wrote it, or start {new} (nothing in it was changed)"
        )


def check_sweep_layout(sweep_dir: Path) -> None:
    """check_layout for every job dir of a sweep run again that holds results: the first one another version
    wrote is refused (a job killed before its first result runs again, as before). A run's own dir is not a
    sweep dir: its jobs would be written into it."""
    if (Path(sweep_dir) / ".hydra" / "config.yaml").is_file():
        raise UserError(f"hydra.sweep.dir={sweep_dir}: is a run's dir, not a sweep's; pass a new dir")
    for config in sorted(Path(sweep_dir).glob("*/.hydra/config.yaml")):
        job_dir = config.parent.parent
        if (job_dir / METRICS).is_file() or (job_dir / "checkpoints").is_dir():
            fix = "a new sweep dir, or move that job dir out of this one"
            check_layout(job_dir, f"hydra.sweep.dir={sweep_dir}: job dir {job_dir.name}", fix)


# What a checkpoint fixes: the weights' shapes and the optimizer state (its lr and decay included) are
# restored from it, so a new value for these keys would be silently ignored or fail to load.
FIXED_BY_CHECKPOINT = (
    *("model.", "optimizer.", "data.block_size", "data.tokenizer"),
    "callbacks.early_stopping.patience",  # Lightning's EarlyStopping restores its patience too
    "trainer.accumulate_grad_batches",  # the batch stream restarts at step x N batches, Lightning's count too
)


def check_resume_overrides(overrides: list[str], config_dir: Path) -> None:
    """A resumed run uses its saved config: keys can change, config groups cannot be picked again."""
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key.startswith(FIXED_BY_CHECKPOINT):
            raise UserError(
                f"{override}: a resumed run restores {key} from its checkpoint (with the model, optimizer, "
                "batch stream and early-stopping state), so it cannot change; start a new run to try another value"
            )
        if "." not in key and (config_dir / key).is_dir():
            raise UserError(
                f"{override}: a resumed run keeps its saved config, so config groups cannot be chosen again; "
                f"set keys instead (e.g. {key}.<key>=<value>)"
            )


# .hydra/<this> names the subdir whose config.yaml the run last resumed with (written once that resume started)
LATEST_CONFIG = "latest_config"


def run_config_dir(run_dir: Path) -> Path:
    """Where the config a resume composes from lives: the last resume's that started training, else the
    run's own (.hydra/), so that a second resume keeps what the first one changed (trainer.max_steps=...)."""
    pointer = run_dir / ".hydra" / LATEST_CONFIG
    latest = run_dir / pointer.read_text().strip() if pointer.is_file() else None
    return latest if latest is not None and (latest / "config.yaml").is_file() else run_dir / ".hydra"


def record_latest_config(run_dir: Path) -> None:
    """Called once a resume has passed every check: the next resume composes from this one's config."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and (subdir := HydraConfig.get().output_subdir):
        write_atomic(Path(run_dir) / ".hydra" / LATEST_CONFIG, f"{subdir}\n".encode())


def resume_overrides(run_dir: Path, config_dir: Path) -> list[str]:
    """Hydra overrides that continue `run_dir` in place, keeping its earlier .hydra/ files."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    return [
        f"hydra.run.dir={quoted(str(run_dir))}",  # a sweep job's dir has `=` and `,` in its name
        "hydra.job.name=train",
        f"hydra.output_subdir=.hydra/resume-{stamp}",
        f"hydra.searchpath=[{quoted(f'file://{config_dir}')}]",
        "hydra/job_logging=tinytransformer",
    ]


def checkpoint_to_continue(output_dir: Path) -> Path | None:
    """The last.ckpt of a sweep job started again in its own run dir (requeued, or its sweep run again)."""
    last = Path(output_dir) / "checkpoints" / LAST
    return last if last.is_file() else None


# What a run writes beside .hydra/, its log and its lock.
RESULTS = ("checkpoints", "tensorboard", "csv", "wandb", METRICS, FAILED_FILE)


def start_over(run_dir: Path) -> list[str]:
    """Remove what an earlier attempt of a sweep job left in its dir (it failed, or was killed, before its
    first last.ckpt), so the job runs again as in a new dir; returns the names removed."""
    removed = []
    for name in RESULTS:
        path = Path(run_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def refuse_existing_run(run_dir: str) -> None:
    """A new run must not write into a run dir that already holds checkpoints or results, nor into a dir
    of runs (compare_runs would then take the whole dir for one run and hide those below it)."""
    path = Path(run_dir)
    if (path / "checkpoints").exists() or (path / METRICS).exists():
        raise UserError(
            f"hydra.run.dir={run_dir} already holds a run; continue it with resume={run_dir} or choose a new dir"
        )
    below = next(path.glob("*/**/.hydra/config.yaml"), None) if path.is_dir() else None
    if below is not None:
        raise UserError(
            f"hydra.run.dir={run_dir} holds other runs (e.g. {below.parent.parent}); choose a new dir for this one"
        )


class RunDirInUse(UserError):
    """Another live process holds the run dir's lock."""


# Run dirs this process holds, path -> open lock file. The kernel drops an flock when its holder dies, so a
# SIGKILLed run leaves no stale lock; the file itself stays, naming its last holder.
_held: dict[Path, object] = {}


def lock_run_dir(run_dir: str | Path) -> None:
    """Make `run_dir` (if need be) and hold its lock for this process; refuse if another process holds it.

    Only the process that writes a run dir takes the lock: DDP ranks > 0 and the processes ddp_spawn starts
    never call this, and a SLURM requeue or a resumed run finds the lock free once the old process is gone.
    """
    path = Path(run_dir).resolve()
    if path in _held:
        return
    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / LOCK, "a+")  # noqa: SIM115 (held open: the lock lives as long as the file is open)
    for attempt in range(5):  # a reader (compare_runs) may hold a shared lock for a moment
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt == 4:
                holder = lock_holder_text(handle)
                handle.close()
                raise RunDirInUse(
                    f"{path} is in use by {holder}; wait for that run to end (or stop it), or write to another dir"
                ) from None
            time.sleep(0.1)
    since = datetime.now().astimezone().isoformat(timespec="seconds")
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}) + "\n")
    handle.flush()
    _held[path] = handle


def lock_holder_text(handle) -> str:
    """`pid 123 on host since <time>`, from an open lock file."""
    handle.seek(0)
    try:
        info = json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        info = {}
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {info.get('since', '?')}"


def lock_holder(run_dir: str | Path) -> str:
    """Who holds (or last held) `run_dir`'s lock."""
    try:
        with (Path(run_dir) / LOCK).open("r") as handle:
            return lock_holder_text(handle)
    except OSError:
        return "an unknown process"


def release_run_dir(run_dir: str | Path) -> None:
    """Let go of a run dir's lock (a sweep's next job, in the same process, takes its own)."""
    handle = _held.pop(Path(run_dir).resolve(), None)
    if handle is not None:
        handle.close()


def is_locked(run_dir: str | Path) -> bool:
    """Whether a live process holds `run_dir`'s lock (that run is still going)."""
    lock = Path(run_dir) / LOCK
    if Path(run_dir).resolve() in _held:
        return True
    try:
        with lock.open("r") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False
    except FileNotFoundError:
        return False


def pinned_dirs(cfg, overrides: list[str]) -> list[str]:
    """`hydra.run.dir=...` and `hydra.sweep.dir=...` as composed now (unless given), for Hydra to keep."""
    from omegaconf import OmegaConf

    given = {o.split("=", 1)[0] for o in overrides}
    keys = [key for key in ("hydra.run.dir", "hydra.sweep.dir") if key not in given]
    return [f"{key}={quoted(str(OmegaConf.select(cfg, key)))}" for key in keys]


def quoted(value: str) -> str:
    """`value` as one quoted Hydra override value (a path with `,` or `=`, a non-ASCII prompt)."""
    # In a quoted value a backslash escapes only a quote or the backslashes right before one.
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped) + "'"


def check_writable(directory: Path) -> None:
    """Make `directory` and write a file in it, so a write that cannot succeed fails here, in one line."""
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".write-check-{os.getpid()}"
    try:
        probe.write_bytes(b"x" * 4096)  # a full disk may still take an empty file
    finally:
        probe.unlink(missing_ok=True)
