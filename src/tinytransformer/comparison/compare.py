"""Comparing runs: a row per setting (overrides minus seed), tested against a baseline; failures; curves."""

from __future__ import annotations

import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from tinytransformer.comparison.curves import plot_curves
from tinytransformer.comparison.files import run_row, runs_csv, summary
from tinytransformer.comparison.records import RunRecord, find_runs
from tinytransformer.comparison.significance import ALPHA, Comparison, against_baseline, comparison_cells
from tinytransformer.errors import UserError, WriteFailed, exit_on_user_error, os_error_line
from tinytransformer.files import write_atomic, write_json_atomic

REPORT, TABLE, SUMMARY, CURVES = "comparison.md", "comparison.csv", "comparison.json", "val_curves.png"
STUDY = "optimization_results.yaml"  # hydra's Optuna sweeper writes it into the sweep dir when the study ends
_SHORT_PREFIXES = ("model.", "optimizer.", "trainer.", "regularizers.", "callbacks.early_stopping.")
_USAGE = "pass a sweep dir (logs/train/multiruns/<date>/<time>), a run dir, or logs/"
_COLUMNS = (
    *("setting", "runs", "best val loss", "best val bits/char", "final train loss", "generalization gap"),
    *("best step", "stop reason(s)", "Δ best val loss vs baseline [95 % CI]", "p", "test", "verdict"),
)
_TEXT_COLUMNS = {"setting", "stop reason(s)", "test", "verdict"}  # left-aligned; numbers align right


@dataclass
class SettingGroup:
    """The runs (seeds) of one setting, with the label shown in the table and the plot legend."""

    label: str
    runs: list[RunRecord]

    @property
    def setting(self) -> tuple[str, ...]:
        return self.runs[0].setting

    def values(self, key: str) -> list[float]:
        return [float(r.metrics[key]) for r in self.runs if r.metrics.get(key) is not None]

    def seeds_and_losses(self) -> list[tuple[str | None, float]]:
        return [(r.seed, float(r.metrics["best_val_loss"])) for r in self.runs]


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


def drop_shared_overrides(runs: list[RunRecord]) -> tuple[str, ...]:
    """Take the overrides that every run has out of each run's setting (they tell no runs apart)."""
    if len(runs) < 2:
        return ()
    shared = set.intersection(*(set(r.setting) for r in runs))
    for run in runs:
        run.setting = tuple(o for o in run.setting if o not in shared)
    return tuple(sorted(shared))


def setting_labels(runs: list[RunRecord]) -> dict[tuple[str, ...], str]:
    """Each setting's name in the table, the csv and the json: short, unless short names collide."""
    settings = {run.setting for run in runs}
    labels = {setting: short_label(setting) for setting in settings}
    if len(set(labels.values())) < len(labels):  # short names collide (model.x vs data.x): show full ones
        labels = {setting: ", ".join(setting) or "baseline" for setting in settings}
    return labels


def group_by_setting(runs: list[RunRecord]) -> list[SettingGroup]:
    """Finished runs grouped by setting, best (lowest mean best val loss) first."""
    by_setting: dict[tuple[str, ...], list[RunRecord]] = {}
    for run in runs:
        if run.finished:
            by_setting.setdefault(run.setting, []).append(run)
    labels = setting_labels(runs)
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


def choose_baseline(groups: list[SettingGroup], name: str | None) -> SettingGroup | None:
    """The setting `baseline=<name>` names; by default the first whose values are all `none`, else row 1."""
    if name is None:
        nones = (g for g in groups if all(o.partition("=")[2] == "none" for o in g.setting))
        return next(nones, groups[0] if groups else None)
    # Spaces aside: `a=1,b=2` names the setting `a=1, b=2`, and so does its full overrides' spelling.
    wanted = re.sub(r"\s", "", name)
    for g in groups:
        if wanted in (re.sub(r"\s", "", g.label), re.sub(r"\s", "", ",".join(g.setting))):
            return g
    settings = "; ".join(g.label for g in groups) or "none (no finished runs)"
    raise UserError(f"baseline={name}: no setting of that name; the settings are: {settings}")


def versus_baseline(
    groups: list[SettingGroup], baseline: SettingGroup | None
) -> dict[str, Comparison | None]:
    """Each setting's best val loss against the baseline's, by label; the baseline's own is None."""
    base = baseline.seeds_and_losses() if baseline is not None else []
    return {g.label: None if g is baseline else against_baseline(g.seeds_and_losses(), base) for g in groups}


def rank_note(root: Path) -> str | None:
    """The line saying what the rank column ranks by, for an Optuna study's sweep dir; None elsewhere."""
    # Only a study: a sweep of one seed per setting (experiment=regularization seed=1) still has a baseline.
    if (root / STUDY).is_file():
        return f"rank: by best val loss, the objective the Optuna study ({STUDY}) minimizes"
    return None


def markdown_table(groups: list[SettingGroup], versus: dict[str, Comparison | None], ranked: bool) -> str:
    """One row per setting, in the order given, with its rank first where `ranked`."""
    columns = ("rank", *_COLUMNS) if ranked else _COLUMNS
    aligns = ["---" if c in _TEXT_COLUMNS else "--:" for c in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(aligns) + "|"]
    for rank, g in enumerate(groups, start=1):
        reasons = sorted({str(r.metrics.get("stop_reason")) for r in g.runs})
        row = [
            g.label.replace("|", "\\|"),
            str(len(g.runs)),
            mean_std(g.values("best_val_loss")),
            mean_std(g.values("best_val_bpc")),
            mean_std(g.values("final_train_loss")),
            mean_std(_gaps(g)),
            mean_std(g.values("best_step"), decimals=0),
            ", ".join(reasons),
            *comparison_cells(versus[g.label]),
        ]
        lines.append("| " + " | ".join([str(rank)] * ranked + row) + " |")
    return "\n".join(lines)


def entropy_floor(groups: list[SettingGroup]) -> float | None:
    """The corpus's entropy floor in bits/char, where a run recorded one (the built-in corpus only)."""
    floors = [v for g in groups for v in g.values("entropy_floor_bpc")]
    return floors[0] if floors else None


def report(
    runs: list[RunRecord],
    groups: list[SettingGroup],
    shared: tuple[str, ...],
    versus: dict[str, Comparison | None],
    ranked_by: str | None,
) -> str:
    """The table, its baseline, what all runs share, the entropy floor, a line per run not in the table."""
    lines = [markdown_table(groups, versus, bool(ranked_by)) if groups else "no finished runs to compare"]
    baseline = next((label for label, c in versus.items() if c is None), None)
    if baseline is not None:
        lines += [
            "",
            f"baseline: {baseline} (choose another with baseline=<setting>); verdict at p < {ALPHA}",
        ]
    if ranked_by:
        lines.append(ranked_by)
    if shared:
        lines += ["", f"all runs: {short_label(shared)}"]
    floor = entropy_floor(groups)
    if floor is not None:
        lines += ["", f"entropy floor: {floor:.4f} bits/char"]
    problems = [f"- {r.name}: {r.state_line()}" for r in runs if not r.finished]
    if problems:
        lines += ["", *problems]
    return "\n".join(lines)


def compare(root: str | Path, baseline: str | None = None) -> str:
    """Compare the runs at or below `root`: returns the report; writes comparison.md, .csv, .json, the curves.

    `baseline` names the setting the others are tested against; None takes choose_baseline's default.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: no such directory; {_USAGE}")
    runs = find_runs(root)
    if not runs:
        raise UserError(f"{root}: no run dirs found (none holds .hydra/config.yaml); {_USAGE}")
    shared = drop_shared_overrides(runs)
    groups = group_by_setting(runs)
    versus = versus_baseline(groups, choose_baseline(groups, baseline))
    ranked_by = rank_note(root)
    text = report(runs, groups, shared, versus, ranked_by)
    labels = setting_labels(runs)
    rows = [run_row(run, labels[run.setting]) for run in runs]
    try:
        write_atomic(root / REPORT, (text + "\n").encode())
        write_atomic(root / TABLE, runs_csv(rows))
        write_json_atomic(root / SUMMARY, summary(groups, versus, bool(ranked_by), shared, rows))
        plot_curves(groups, root / CURVES, entropy_floor(groups))
    except OSError as err:
        written = f"{REPORT}, {TABLE}, {SUMMARY} and {CURVES}"
        fix = f"{written} go into the dir compared: make it writable, or compare a copy of it"
        raise WriteFailed(os_error_line(err, fix=fix)) from None
    return text


@exit_on_user_error
def compare_main(argv: list[str] | None = None) -> None:
    """`python scripts/compare_runs.py <dir> [baseline=<setting>]`: print the comparison and what it wrote."""
    args = sys.argv[1:] if argv is None else argv
    usage = f"usage: python scripts/compare_runs.py <dir> [baseline=<setting>]; {_USAGE}"
    if args in (["-h"], ["--help"]):
        print(usage)
        return
    keys = [a for a in args if a.startswith("baseline=")]
    dirs = [a for a in args if not a.startswith("baseline=")]
    if len(dirs) != 1:
        raise UserError(f"expected one directory, got {len(dirs)} arguments; {usage}")
    if len(keys) > 1:
        raise UserError(f"baseline given {len(keys)} times ({', '.join(keys)}): pass it once; {usage}")
    root = Path(dirs[0]).expanduser()
    print(compare(root, keys[0].partition("=")[2] if keys else None))
    print("", *(f"wrote {root / name}" for name in (REPORT, TABLE, SUMMARY, CURVES)), sep="\n")
