"""Runs grouped by setting (their overrides minus seed and paths), labelled, and each setting tested against
the baseline."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass

from tinytransformer.comparison.records import RunRecord
from tinytransformer.comparison.significance import Comparison, Rule, against_baseline
from tinytransformer.errors import UserError

METRICS = {"best_val_loss": "best val loss", "test_loss": "test loss at the best checkpoint"}
_SHORT_PREFIXES = ("model.", "optimizer.", "trainer.", "regularizers.", "callbacks.early_stopping.")


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
