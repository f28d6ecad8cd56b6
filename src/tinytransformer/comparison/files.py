"""compare_runs' machine-readable files: comparison.csv (a row per run), comparison.json (settings, runs)."""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from tinytransformer.comparison.significance import Comparison, Rule

if TYPE_CHECKING:
    from tinytransformer.comparison.groups import SettingGroup
    from tinytransformer.comparison.records import RunRecord

# The metrics.json values compare_runs reads, in the csv's column order.
METRIC_FIELDS = (
    "best_val_loss",
    "best_val_bpc",
    "final_train_loss",
    "final_val_loss",
    "best_step",
    "final_val_step",
    "stop_reason",
    "entropy_floor_bpc",
    "test_loss",
)
RUN_FIELDS = ("run", "setting", "seed", "status", *METRIC_FIELDS, "failure")
_SUMMARIZED = ("best_val_loss", "best_val_bpc", "final_train_loss", "best_step", "test_loss")
_VERSUS = ("diff", "ci", "alpha", "p", "test", "verdict", "seeds_needed")


def run_row(run: RunRecord, label: str) -> dict[str, Any]:
    """One run as a csv row and a json entry: what compare_runs read from its dir (None where it has none)."""
    metrics = run.metrics or {}
    fields = {"run": run.name, "setting": label, "seed": run.seed, "status": run.status}
    return {**fields, **{key: metrics.get(key) for key in METRIC_FIELDS}, "failure": run.failure}


def runs_csv(rows: list[dict[str, Any]], fields: tuple[str, ...] | list[str] = RUN_FIELDS) -> bytes:
    """comparison.csv: a header, then one row per run (an empty cell where a value is None); other `fields`
    for other rows (the settings csv)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fields)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def _mean_sd(values: list[float]) -> dict[str, float | None]:
    mean = statistics.mean(values) if values else None
    return {"mean": mean, "sd": statistics.stdev(values) if len(values) > 1 else None}


def _json_safe(row: dict[str, Any]) -> dict[str, Any]:
    """NaN and inf as null: JSON has no such numbers (a run stopped before validating has a NaN loss)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def summary(
    groups: list[SettingGroup],
    versus: dict[str, Comparison | None],
    ranked: bool,
    shared: tuple[str, ...],
    rows: list[dict[str, Any]],
    metric: str,
    rule: Rule,
) -> dict[str, Any]:
    """comparison.json: the baseline, the rule, each setting (table order) with its statistics, every run."""
    settings = [
        {
            "rank": rank,
            "setting": g.label,
            "overrides": list(g.setting),
            "runs": [r.name for r in g.runs],
            "seeds": [r.seed for r in g.runs],
            **{key: _mean_sd(g.values(key)) for key in _SUMMARIZED},
            "vs_baseline": None if versus[g.label] is None else _json_safe(asdict(versus[g.label])),
        }
        for rank, g in enumerate(groups, start=1)
    ]
    baseline = next((label for label, c in versus.items() if c is None), None)
    return {
        "baseline": baseline,
        "metric": metric,
        "rule": {"alpha": rule.alpha, "delta": rule.delta, "max_seeds": rule.max_seeds}
        | ({"seed_looks": list(rule.schedule())} if rule.start_seeds is not None else {}),
        "ranked_by": metric if ranked else None,
        "shared_overrides": list(shared),
        "settings": settings,
        "runs": [_json_safe(row) for row in rows],
    }


def settings_csv(settings: list[dict[str, Any]]) -> bytes:
    """comparison_settings.csv: comparison.json's settings, one row each, flattened (`best_val_loss_mean`,
    `vs_baseline_verdict`, ...; the CI as `vs_baseline_ci_low` and `_high`)."""
    rows = []
    for setting in settings:
        row = {"rank": setting["rank"], "setting": setting["setting"], "runs": len(setting["runs"])}
        row["seeds"] = " ".join(str(seed) for seed in setting["seeds"])
        for key in _SUMMARIZED:
            row |= {f"{key}_mean": setting[key]["mean"], f"{key}_sd": setting[key]["sd"]}
        versus = setting["vs_baseline"] or dict.fromkeys(_VERSUS)
        ci = versus.get("ci") or [None, None]
        row |= {f"vs_baseline_{key}": versus[key] for key in _VERSUS if key != "ci"}
        row |= {"vs_baseline_ci_low": ci[0], "vs_baseline_ci_high": ci[1]}
        rows.append(_json_safe(row))
    return runs_csv(rows, list(rows[0]) if rows else ["setting"])
