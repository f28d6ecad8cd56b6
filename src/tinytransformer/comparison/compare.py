"""Comparing runs: a row per setting (overrides minus seed), tested against a baseline; failures; curves."""

from __future__ import annotations

import re
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from tinytransformer.comparison.curves import SETTINGS_DIR, plot_curves, write_setting_runs
from tinytransformer.comparison.files import run_row, runs_csv, settings_csv, summary
from tinytransformer.comparison.records import RunRecord, find_runs
from tinytransformer.comparison.significance import Comparison, Rule, against_baseline, comparison_cells
from tinytransformer.errors import UserError, WriteFailed, exit_on_user_error, os_error_line
from tinytransformer.files import write_atomic, write_json_atomic

REPORT, TABLE, SUMMARY, CURVES = "comparison.md", "comparison.csv", "comparison.json", "val_curves.png"
SETTINGS_TABLE = "comparison_settings.csv"
METRICS = {"best_val_loss": "best val loss", "test_loss": "test loss at the best checkpoint"}
SEED_SWEEPER = "SeedSweeper"  # hydra.sweeper._target_ of a seed sweep ends with it
STUDY = "optimization_results.yaml"  # hydra's Optuna sweeper writes it into the sweep dir when the study ends
_SHORT_PREFIXES = ("model.", "optimizer.", "trainer.", "regularizers.", "callbacks.early_stopping.")
_USAGE = "pass a sweep dir (logs/train/multiruns/<date>/<time>), a run dir, or logs/"
_KEYS = ("baseline", "metric", "delta")
_COLUMNS = (
    *("setting", "runs", "best val loss", "best val bits/char", "final train loss", "generalization gap"),
    *("best step", "stop reason(s)", "Δ {metric} vs baseline [CI]", "p", "test", "verdict"),
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

    def sample(self, metric: str) -> list[tuple[str | None, float]]:
        """(seed, metric) of each run that has the metric."""
        return [(r.seed, float(r.metrics[metric])) for r in self.runs if r.metrics.get(metric) is not None]


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


def group_by_setting(runs: list[RunRecord], metric: str = "best_val_loss") -> list[SettingGroup]:
    """Finished runs grouped by setting, best (lowest mean metric; best val loss for a tie) first. A setting's
    seed counts once: a second run of it (a sweep re-run whose jobs were numbered otherwise) is marked
    `duplicate_of` the first, since counting both would narrow the CI with a copy."""
    by_setting: dict[tuple[str, ...], list[RunRecord]] = {}
    first: dict[tuple[tuple[str, ...], str], RunRecord] = {}
    for run in runs:
        if run.finished and run.seed is not None and (run.setting, run.seed) in first:
            run.duplicate_of = first[run.setting, run.seed].name
        elif run.finished:
            first.setdefault((run.setting, run.seed), run)
            by_setting.setdefault(run.setting, []).append(run)
    labels = setting_labels(runs)
    groups = [SettingGroup(labels[s], group_runs) for s, group_runs in by_setting.items()]

    def mean(g: SettingGroup, key: str) -> float:
        return statistics.mean(g.values(key)) if g.values(key) else float("inf")

    return sorted(groups, key=lambda g: (mean(g, metric), mean(g, "best_val_loss"), g.label))


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

    # Spaces and order aside: `b=2,a=1` names the setting `a=1, b=2`, and so does its full overrides' spelling.
    def parts(spelling: str) -> set[str]:
        return set(re.sub(r"\s", "", spelling).split(","))

    for g in groups:
        if parts(name) in (parts(g.label), parts(",".join(g.setting))):
            return g
    settings = "; ".join(g.label for g in groups) or "none (no finished runs)"
    raise UserError(f"baseline={name}: no setting of that name; the settings are: {settings}")


def versus_baseline(
    groups: list[SettingGroup], baseline: SettingGroup | None, metric: str, rule: Rule
) -> dict[str, Comparison | None]:
    """Each setting's metric against the baseline's, by label; the baseline's own is None. A setting (or a
    baseline) without the metric in 2 runs gets `n/a`."""
    base = baseline.sample(metric) if baseline is not None else []
    versus: dict[str, Comparison | None] = {}
    for g in groups:
        sample = g.sample(metric)
        if g is baseline:
            versus[g.label] = None
        elif not sample or not base:
            missing = "its runs have" if not sample else "the baseline's runs have"
            versus[g.label] = Comparison(float("nan"), None, None, None, f"n/a: none of {missing} {metric}")
        else:
            versus[g.label] = against_baseline(sample, base, rule)
    return versus


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


def markdown_table(
    groups: list[SettingGroup], versus: dict[str, Comparison | None], ranked: bool, metric: str, rule: Rule
) -> str:
    """One row per setting, in the order given, with its rank first where `ranked`."""
    columns = tuple(c.format(metric=METRICS[metric]) for c in _COLUMNS)
    columns = ("rank", *columns) if ranked else columns
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
            *comparison_cells(versus[g.label], rule.max_seeds),
        ]
        lines.append("| " + " | ".join([str(rank)] * ranked + row) + " |")
    return "\n".join(lines)


def entropy_floor(groups: list[SettingGroup]) -> float | None:
    """The corpus's entropy floor in bits/char, where a run recorded one (the built-in corpus only)."""
    floors = [v for g in groups for v in g.values("entropy_floor_bpc")]
    return floors[0] if floors else None


def rule_lines(rule: Rule, metric: str) -> list[str]:
    """What the verdicts mean, under the table."""
    if rule.start_seeds is None:
        level = f"a {(1 - rule.alpha) * 100:g} % CI"
    else:
        looks = ", ".join(map(str, rule.schedule()))
        level = f"a 1 - {rule.alpha}/2^k CI at the seed sweep's k-th look (at {looks} seeds)"
    return [
        f"verdict on Δ {METRICS[metric]} (setting - baseline) by {level}: better or worse where it excludes 0, "
        f"equivalent where it lies within ±δ = {rule.delta} nats (δ: delta=<nats>), undecided otherwise, "
        f"with the seeds per setting that would decide it at the observed spread (budget {rule.max_seeds})"
    ]


def report(
    runs: list[RunRecord],
    groups: list[SettingGroup],
    shared: tuple[str, ...],
    versus: dict[str, Comparison | None],
    ranked_by: str | None,
    metric: str,
    rule: Rule,
) -> str:
    """The table, its baseline, what all runs share, the entropy floor, a line per run not in the table."""
    table = markdown_table(groups, versus, bool(ranked_by), metric, rule)
    lines = [table if groups else "no finished runs to compare"]
    baseline = next((label for label, c in versus.items() if c is None), None)
    if baseline is not None:
        lines += [
            "",
            f"baseline: {baseline} (choose another with baseline=<setting>)",
            *rule_lines(rule, metric),
        ]
    if ranked_by:
        lines.append(ranked_by)
    if shared:
        lines += ["", f"all runs: {short_label(shared)}"]
    floor = entropy_floor(groups)
    if floor is not None:
        lines += ["", f"entropy floor: {floor:.4f} bits/char"]
    problems = [f"- {r.name}: {r.state_line()}" for r in runs if not r.finished]
    problems += [
        f"- {r.name}: the same setting and seed as {r.duplicate_of}, counted once"
        for r in runs
        if r.duplicate_of
    ]
    if problems:
        lines += ["", *problems]
    return "\n".join(lines)


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
