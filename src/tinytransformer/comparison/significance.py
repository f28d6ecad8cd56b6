"""Does a setting beat the baseline? Its best val loss against the baseline's: t-test, 95 % CI, verdict."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

ALPHA = 0.05
PAIRED, WELCH = "paired", "Welch"
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no difference"

Sample = list[tuple[str | None, float]]  # (seed, best val loss) of each run of a setting


@dataclass(frozen=True)
class Comparison:
    """Setting minus baseline: mean difference, its 95 % CI, p-value, test; no CI, p or test under 2 runs."""

    diff: float
    ci: tuple[float, float] | None
    p: float | None
    test: str | None
    verdict: str  # BETTER | WORSE | NO_DIFFERENCE, or `n/a: ...` saying why there is no test


def seed_pairs(runs: Sample, baseline: Sample) -> list[tuple[float, float]] | None:
    """(run, baseline run) values matched by seed, or None unless every run has a baseline run of its seed.

    A seed also draws the corpus, so a pair shares its data: pairing takes that variance out of the test.
    A seed that is missing or repeated on either side would pair by guess, so it makes the test Welch's.
    """
    seeds, base_seeds = [s for s, _ in runs], [s for s, _ in baseline]
    if None in seeds or len(set(seeds)) < len(seeds) or len(set(base_seeds)) < len(base_seeds):
        return None
    by_seed = dict(baseline)
    if not set(seeds) <= by_seed.keys():
        return None
    return [(value, by_seed[seed]) for seed, value in runs]


def verdict(ci: tuple[float, float]) -> str:
    """Better (lower loss) or worse where the CI excludes 0; the same as p < ALPHA for these tests."""
    low, high = ci
    return BETTER if high < 0 else WORSE if low > 0 else NO_DIFFERENCE


def against_baseline(runs: Sample, baseline: Sample) -> Comparison:
    """Paired t-test where the seeds pair up (seed_pairs), else Welch's t-test; n/a under 2 runs a side."""
    values, base = [v for _, v in runs], [v for _, v in baseline]
    if len(values) < 2 or len(base) < 2:
        why = "1 run" if len(values) < 2 else "1 baseline run"
        return Comparison(statistics.mean(values) - statistics.mean(base), None, None, None, f"n/a: {why}")
    pairs = seed_pairs(runs, baseline)
    test = PAIRED if pairs is not None else WELCH
    if pairs is not None:
        values, base = [v for v, _ in pairs], [b for _, b in pairs]
    diff = statistics.mean(values) - statistics.mean(base)
    spread = [[v - b for v, b in pairs]] if pairs is not None else [values, base]
    if all(statistics.stdev(s) == 0 for s in spread):
        # t is 0/0 or ±inf (scipy says nan): identical runs are no difference, a constant shift is one.
        return Comparison(diff, (diff, diff), 1.0 if diff == 0 else 0.0, test, verdict((diff, diff)))
    # Imported here: finding runs and every error of compare_runs need no scipy.
    from scipy import stats

    if pairs is not None:
        result = stats.ttest_rel(values, base)
    else:  # Welch: unequal variances, Welch–Satterthwaite df
        result = stats.ttest_ind(values, base, equal_var=False)
    interval = result.confidence_interval(confidence_level=1 - ALPHA)
    ci = (float(interval.low), float(interval.high))
    return Comparison(diff, ci, float(result.pvalue), test, verdict(ci))


def comparison_cells(comparison: Comparison | None) -> list[str]:
    """The table's Δ [95 % CI], p, test and verdict cells; None is the baseline's row."""
    if comparison is None:
        return ["baseline", "", "", "baseline"]
    c = comparison
    delta = f"{c.diff:+.4f}" + (f" [{c.ci[0]:+.4f}, {c.ci[1]:+.4f}]" if c.ci is not None else "")
    p = "n/a" if c.p is None else "<0.001" if c.p < 0.001 else f"{c.p:.3f}"
    return [delta, p, c.test or "n/a", c.verdict]


def as_json(comparison: Comparison | None) -> dict | None:
    """comparison.json's `vs_baseline`: null for the baseline itself."""
    if comparison is None:
        return None
    c = comparison
    ci = list(c.ci) if c.ci is not None else None
    return {"diff": c.diff, "ci95": ci, "p": c.p, "test": c.test, "verdict": c.verdict}
