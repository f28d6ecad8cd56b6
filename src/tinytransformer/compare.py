"""Comparing runs: one table row per setting (overrides minus seed), failed runs, val bits/char curves."""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tinytransformer.curves import plot_curves
from tinytransformer.errors import UserError, WriteFailed, exit_on_user_error, os_error_line
from tinytransformer.runs import (
    FAILED,
    FAILED_FILE,
    FINISHED,
    INTERRUPTED,
    METRICS,
    RUNNING,
    is_locked,
    lock_holder,
    write_atomic,
)

REPORT = "comparison.md"
CURVES = "val_curves.png"
KILLED = "killed"  # not finished, and no process holds the run dir: resume it
# Keys that say where a run was written, not what it trained: they never make a setting.
_PATH_KEYS = ("paths.", "hydra.", "resume")
_SHORT_PREFIXES = ("model.", "optimizer.", "trainer.", "data.augment.", "callbacks.early_stopping.")
_USAGE = "pass a sweep dir (logs/train/multiruns/<date>/<time>), a run dir, or logs/"
_COLUMNS = (
    "setting",
    "runs",
    "best val loss",
    "best val bits/char",
    "final train loss",
    "generalization gap",
    "best step",
    "stop reason(s)",
)


@dataclass
class RunRecord:
    """One run dir: its setting, its seed, its results (metrics) or why it has none (failure), its state."""

    name: str
    dir: Path
    setting: tuple[str, ...]
    seed: str | None
    metrics: dict[str, Any] | None
    failure: str | None
    status: str = FINISHED  # runs.FINISHED | RUNNING | INTERRUPTED | FAILED, or KILLED

    @property
    def finished(self) -> bool:
        """Ran to its end, validated at its last step: it belongs in the table."""
        best = (self.metrics or {}).get("best_val_loss")
        return self.status == FINISHED and best is not None and math.isfinite(best)

    def state_line(self) -> str:
        """Why the run is not in the table, in one line."""
        step = (self.metrics or {}).get("final_val_step") or (self.metrics or {}).get("best_step")
        results = f"its last validation was at step {step}" if step is not None else "no validation yet"
        resume = f"resume with: python scripts/train.py resume={self.dir}"
        if self.status == FAILED:
            return f"failed: {self.failure}"
        if self.status == RUNNING:
            return f"running ({results}; held by {lock_holder(self.dir)})"
        if self.status == INTERRUPTED:
            return f"stopped by {(self.metrics or {}).get('stop_reason')} ({results}); {resume}"
        return f"killed: no process holds it and it did not finish ({results}); {resume}"


@dataclass
class SettingGroup:
    """The runs (seeds) of one setting, with the label shown in the table and the plot legend."""

    label: str
    runs: list[RunRecord]

    def values(self, key: str) -> list[float]:
        return [float(r.metrics[key]) for r in self.runs if r.metrics.get(key) is not None]


def split_overrides(overrides: list[str]) -> tuple[tuple[str, ...], str | None]:
    """(setting, seed) of a run's Hydra overrides; the seed and path-like keys are not part of a setting."""
    setting, seed = [], None
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key == "seed":
            seed = value
        elif not key.startswith(_PATH_KEYS):
            setting.append(override)
    return tuple(sorted(setting)), seed


def short_label(setting: tuple[str, ...]) -> str:
    """`dropout=0.1, weight_decay=0.1` for (model.dropout=0.1, optimizer.weight_decay=0.1)."""
    if not setting:
        return "baseline"
    short = []
    for override in setting:
        sign, key = re.match(r"([+~]*)(.*)", override).groups()
        prefix = next((p for p in _SHORT_PREFIXES if key.startswith(p)), "")
        short.append(sign + key[len(prefix) :])
    return ", ".join(short)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def load_run(run_dir: Path, name: str | None = None) -> RunRecord:
    """Read one run dir's overrides, metrics.json and failed.json."""
    name = name or run_dir.name
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else None
    setting, seed = split_overrides(overrides or [])
    try:
        metrics, failed = _read_json(run_dir / METRICS), _read_json(run_dir / FAILED_FILE)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return RunRecord(name, run_dir, setting, seed, None, f"unreadable results file: {err}")
    failure = str(failed.get("reason", "unknown")) if failed is not None else None
    stop_reason = str((metrics or {}).get("stop_reason", ""))
    if failure is None and stop_reason.startswith("non_finite"):
        failure = stop_reason
    status = run_status(run_dir, metrics, failure)
    if failure is None and status == FAILED:  # a bug ended it: metrics.json says so, no failed.json
        failure = str(metrics.get("stop_reason"))
    return RunRecord(name, run_dir, setting, seed, metrics, failure, status)


def run_status(run_dir: Path, metrics: dict[str, Any] | None, failure: str | None) -> str:
    """Finished, running (a live process holds the run dir's lock), stopped by a signal, failed or killed."""
    if failure is not None:
        return FAILED
    if is_locked(run_dir):
        return RUNNING
    status = (metrics or {}).get("status")
    if status is None and metrics is not None:  # written before metrics.json had a status
        stop_reason = str(metrics.get("stop_reason", ""))
        status = INTERRUPTED if stop_reason.startswith("SIG") else FINISHED if stop_reason else None
    return status if status in (FINISHED, INTERRUPTED, FAILED) else KILLED


def _natural_key(path: Path) -> list:
    """Sort `2_...` before `10_...`: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _run_dirs(directory: Path) -> Iterator[Path]:
    if (directory / ".hydra" / "config.yaml").is_file():
        yield directory
        return  # a run's own subdirs (checkpoints, tensorboard) hold no runs
    for child in sorted(directory.iterdir()):
        if child.is_dir() and not child.is_symlink() and not child.name.startswith("."):
            yield from _run_dirs(child)


def find_runs(root: Path) -> list[RunRecord]:
    """Every run dir (a dir holding .hydra/config.yaml) at or below `root`, in natural name order."""
    run_dirs = sorted(_run_dirs(root), key=_natural_key)
    return [load_run(d, str(d.relative_to(root)) if d != root else d.name) for d in run_dirs]


def drop_shared_overrides(runs: list[RunRecord]) -> tuple[str, ...]:
    """Take the overrides that every run has out of each run's setting (they tell no runs apart)."""
    if len(runs) < 2:
        return ()
    shared = set.intersection(*(set(r.setting) for r in runs))
    for run in runs:
        run.setting = tuple(o for o in run.setting if o not in shared)
    return tuple(sorted(shared))


def group_by_setting(runs: list[RunRecord]) -> list[SettingGroup]:
    """Finished runs grouped by setting, best (lowest mean best val loss) first."""
    by_setting: dict[tuple[str, ...], list[RunRecord]] = {}
    for run in runs:
        if run.finished:
            by_setting.setdefault(run.setting, []).append(run)
    labels = {setting: short_label(setting) for setting in by_setting}
    if len(set(labels.values())) < len(labels):  # short names collide (model.x vs data.x): show full ones
        labels = {setting: ", ".join(setting) or "baseline" for setting in by_setting}
    groups = [SettingGroup(labels[s], group_runs) for s, group_runs in by_setting.items()]
    return sorted(groups, key=lambda g: (statistics.mean(g.values("best_val_loss")), g.label))


def mean_std(values: list[float], decimals: int = 4) -> str:
    """`1.1000 ± 0.1414` (sample std over seeds), the value alone for one run, `n/a` for none."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{decimals}f}"
    return f"{statistics.mean(values):.{decimals}f} ± {statistics.stdev(values):.{decimals}f}"


def _gaps(group: SettingGroup) -> list[float]:
    """final val loss - final train loss per run: how much worse the model does on unseen text."""
    pairs = [(r.metrics.get("final_val_loss"), r.metrics.get("final_train_loss")) for r in group.runs]
    return [val - train for val, train in pairs if val is not None and train is not None]


def markdown_table(groups: list[SettingGroup]) -> str:
    """One row per setting, in the order given."""
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|---|" + "--:|" * (len(_COLUMNS) - 2) + "---|"]
    for g in groups:
        reasons = sorted({str(r.metrics.get("stop_reason")) for r in g.runs})
        cells = [
            g.label.replace("|", "\\|"),
            str(len(g.runs)),
            mean_std(g.values("best_val_loss")),
            mean_std(g.values("best_val_bpc")),
            mean_std(g.values("final_train_loss")),
            mean_std(_gaps(g)),
            mean_std(g.values("best_step"), decimals=0),
            ", ".join(reasons),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def entropy_floor(groups: list[SettingGroup]) -> float | None:
    """The corpus's entropy floor in bits/char, where a run recorded one (the built-in corpus only)."""
    floors = [v for g in groups for v in g.values("entropy_floor_bpc")]
    return floors[0] if floors else None


def report(runs: list[RunRecord], groups: list[SettingGroup], shared: tuple[str, ...] = ()) -> str:
    """The table, what all runs share, the entropy floor, and one line per run that is not in the table."""
    lines = [markdown_table(groups) if groups else "no finished runs to compare"]
    if shared:
        lines += ["", f"all runs: {short_label(shared)}"]
    floor = entropy_floor(groups)
    if floor is not None:
        lines += ["", f"entropy floor: {floor:.4f} bits/char"]
    problems = [f"- {r.name}: {r.state_line()}" for r in runs if not r.finished]
    if problems:
        lines += ["", *problems]
    return "\n".join(lines)


def compare(root: str | Path) -> str:
    """Compare the runs at or below `root`: returns the report, writes comparison.md and val_curves.png there."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: no such directory; {_USAGE}")
    runs = find_runs(root)
    if not runs:
        raise UserError(f"{root}: no run dirs found (none holds .hydra/config.yaml); {_USAGE}")
    shared = drop_shared_overrides(runs)
    groups = group_by_setting(runs)
    text = report(runs, groups, shared)
    try:
        write_atomic(root / REPORT, (text + "\n").encode())
        plot_curves(groups, root / CURVES, entropy_floor(groups))
    except OSError as err:
        fix = f"{REPORT} and {CURVES} go into the dir compared: make it writable, or compare a copy of it"
        raise WriteFailed(os_error_line(err, fix=fix)) from None
    return text


@exit_on_user_error
def compare_main(argv: list[str] | None = None) -> None:
    """`python scripts/compare_runs.py <dir>`: print the comparison and the paths of the files written."""
    args = sys.argv[1:] if argv is None else argv
    usage = f"usage: python scripts/compare_runs.py <dir>; {_USAGE}"
    if args in (["-h"], ["--help"]):
        print(usage)
        return
    if len(args) != 1:
        raise UserError(f"expected one directory, got {len(args)} arguments; {usage}")
    root = Path(args[0]).expanduser()
    print(compare(root))
    print(f"\nwrote {root / REPORT}\nwrote {root / CURVES}")
