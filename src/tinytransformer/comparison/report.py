"""compare_runs' report: the markdown table of settings, the rule under it, the runs not in it."""

from __future__ import annotations

import statistics

from tinytransformer.comparison.groups import METRICS, SettingGroup, short_label
from tinytransformer.comparison.records import RunRecord
from tinytransformer.comparison.significance import Comparison, Rule, comparison_cells

_COLUMNS = (
    *("setting", "runs", "best val loss", "best val bits/char", "final train loss", "generalization gap"),
    *("best step", "stop reason(s)", "Δ {metric} vs baseline [CI]", "p", "test", "verdict"),
)
_TEXT_COLUMNS = {"setting", "stop reason(s)", "test", "verdict"}  # left-aligned; numbers align right


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
