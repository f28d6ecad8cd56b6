"""compare_runs: the runs of a dir grouped by setting (groups.py), reported (report.py) and written to files
(files.py, curves.py), with a seed sweep's own rule and baseline."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import yaml

from tinytransformer.comparison.curves import SETTINGS_DIR, plot_curves, write_setting_runs
from tinytransformer.comparison.files import run_row, runs_csv, settings_csv, summary
from tinytransformer.comparison.groups import (
    METRICS,
    choose_baseline,
    drop_shared_overrides,
    group_by_setting,
    setting_labels,
    versus_baseline,
)
from tinytransformer.comparison.records import find_runs
from tinytransformer.comparison.report import entropy_floor, report
from tinytransformer.comparison.significance import Rule
from tinytransformer.errors import UserError, WriteFailed, exit_on_user_error, os_error_line
from tinytransformer.files import write_atomic, write_json_atomic

REPORT, TABLE, SUMMARY, CURVES = "comparison.md", "comparison.csv", "comparison.json", "val_curves.png"
SETTINGS_TABLE = "comparison_settings.csv"
SEED_SWEEPER = "SeedSweeper"  # hydra.sweeper._target_ of a seed sweep ends with it
STUDY = "optimization_results.yaml"  # hydra's Optuna sweeper writes it into the sweep dir when the study ends
_USAGE = "pass a sweep dir (logs/train/multiruns/<date>/<time>), a run dir, or logs/"
_KEYS = ("baseline", "metric", "delta")


def sweep_rule(root: Path) -> tuple[Rule, dict[str, str]]:
    """The verdict rule of the sweep at `root`, and the sweep's own compare keys (baseline, metric): a seed
    sweep's from its multirun.yaml (hydra.sweeper), so that compare_runs judges as the sweep did; the
    default rule elsewhere."""
    try:
        sweeper = (yaml.safe_load((root / "multirun.yaml").read_text()) or {})["hydra"]["sweeper"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return Rule(), {}
    if not str(sweeper.get("_target_", "")).endswith(SEED_SWEEPER):
        return Rule(), {}
    fields = ("alpha", "delta", "max_seeds", "start_seeds", "add_seeds")
    rule = Rule(**{key: sweeper[key] for key in fields if sweeper.get(key) is not None})
    return rule, {key: str(sweeper[key]) for key in ("baseline", "metric") if sweeper.get(key) is not None}


def rank_note(root: Path, metric: str) -> str | None:
    """The line saying what the rank column ranks by, for an Optuna study's sweep dir; None elsewhere."""
    # Only a study: a sweep of one seed per setting (experiment=regularization seed=1) still has a baseline.
    if not (root / STUDY).is_file():
        return None
    if metric == "best_val_loss":
        return f"rank: by best val loss, the objective the Optuna study ({STUDY}) minimizes"
    return f"rank: by {METRICS[metric]} (the Optuna study ({STUDY}) minimizes the best val loss)"


def compare(
    root: str | Path, baseline: str | None = None, metric: str | None = None, delta: float | None = None
) -> str:
    """Compare the runs at or below `root`: returns the report; writes comparison.md, the csvs, .json, the
    curves.

    `baseline` names the setting the others are tested against; None takes a seed sweep's own, else
    choose_baseline's default. `metric` (a key of METRICS) is what is compared: a seed sweep's own, else the
    best val loss. `delta` replaces the rule's equivalence margin (significance.DELTA, or the seed sweep's).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: no such directory; {_USAGE}")
    runs = find_runs(root)
    if not runs:
        raise UserError(f"{root}: no run dirs found (none holds .hydra/config.yaml); {_USAGE}")
    rule, own = sweep_rule(root)
    metric = metric or own.get("metric", "best_val_loss")
    if metric not in METRICS:
        raise UserError(f"metric={metric}: not a metric compare_runs tests; use one of {', '.join(METRICS)}")
    if delta is not None:
        rule = replace(rule, delta=delta)
    shared = drop_shared_overrides(runs)
    groups = group_by_setting(runs, metric)
    versus = versus_baseline(groups, choose_baseline(groups, baseline or own.get("baseline")), metric, rule)
    ranked_by = rank_note(root, metric)
    text = report(runs, groups, shared, versus, ranked_by, metric, rule)
    labels = setting_labels(runs)
    rows = [run_row(run, labels[run.setting]) for run in runs]
    try:
        write_atomic(root / REPORT, (text + "\n").encode())
        write_atomic(root / TABLE, runs_csv(rows))
        settings = summary(groups, versus, bool(ranked_by), shared, rows, metric, rule)
        write_json_atomic(root / SUMMARY, settings)
        write_atomic(root / SETTINGS_TABLE, settings_csv(settings["settings"]))
        plot_curves(groups, root / CURVES, entropy_floor(groups))
        write_setting_runs(groups, root)
    except OSError as err:
        written = f"{REPORT}, {TABLE}, {SETTINGS_TABLE}, {SUMMARY}, {CURVES} and {SETTINGS_DIR}/"
        fix = f"{written} go into the dir compared: make it writable, or compare a copy of it"
        raise WriteFailed(os_error_line(err, fix=fix)) from None
    return text


@exit_on_user_error
def compare_main(argv: list[str] | None = None) -> None:
    """`python scripts/compare_runs.py <dir> [baseline=<setting>] [metric=<name>] [delta=<nats>]`: print the
    comparison and what it wrote."""
    args = sys.argv[1:] if argv is None else argv
    usage = (
        "usage: python scripts/compare_runs.py <dir> [baseline=<setting>] [metric=best_val_loss|test_loss] "
        f"[delta=<nats>]; {_USAGE}"
    )
    if args in (["-h"], ["--help"]):
        print(usage)
        return
    keys = [a for a in args if a.partition("=")[0] in _KEYS]
    dirs = [a for a in args if a not in keys]
    if len(dirs) != 1:
        raise UserError(f"expected one directory, got {len(dirs)} arguments; {usage}")
    given = {key: [a.partition("=")[2] for a in keys if a.startswith(f"{key}=")] for key in _KEYS}
    for key, values in given.items():
        if len(values) > 1:
            raise UserError(f"{key} given {len(values)} times ({', '.join(values)}): pass it once; {usage}")
    values = {key: found[0] for key, found in given.items() if found}
    delta = values.get("delta")
    if delta is not None:
        try:
            delta = float(delta)
        except ValueError:
            delta = -1.0
        if not 0 < delta < float("inf"):
            raise UserError(
                f"delta={values['delta']}: the equivalence margin must be a number of nats > 0; {usage}"
            )
    root = Path(dirs[0]).expanduser()
    print(compare(root, values.get("baseline"), values.get("metric"), delta))
    written = (REPORT, TABLE, SETTINGS_TABLE, SUMMARY, CURVES)
    print("", *(f"wrote {root / name}" for name in written), sep="\n")
    print(f"wrote {root / SETTINGS_DIR}/: each setting's mean curves; tensorboard --logdir {root}")
