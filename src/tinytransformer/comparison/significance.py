"""Does a setting beat the baseline? Its metric against the baseline's: a t-test's CI, and one of four
verdicts by a rule fixed in advance (the same for compare_runs and the seed sweeper, seed_rounds.py)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from functools import lru_cache

PAIRED, WELCH = "paired", "Welch"
ALPHA = 0.05  # the chance of a false verdict we accept per setting, over all of its looks
# The equivalence margin in nats per token. e^0.01 = 1.01: a setting whose loss is within 0.01 nats of the
# baseline's changes perplexity by less than 1 %, and by less than 0.015 bits/char, finer than the two
# decimals of bits/char that character-level results are compared at.
DELTA = 0.01
BETTER, WORSE, EQUIVALENT, UNDECIDED = "better", "worse", "equivalent", "undecided"


@dataclass(frozen=True)
class Rule:
    """How sure a verdict must be, and how many seeds a setting may get.

    A fixed sweep (start_seeds None) looks once, with a 1 - alpha CI. A seed sweep looks at every setting
    after each round, at n = start_seeds, start_seeds + add_seeds, ..., max_seeds seeds: look k uses a
    1 - alpha / 2**k CI. The looks' alphas sum to less than alpha whatever the budget (Bonferroni over a
    geometric series), so adding seeds until a CI clears cannot push a setting's false-verdict rate past
    alpha; and a larger budget leaves the earlier looks, and so the sweep's first rounds, as they were.
    """

    alpha: float = ALPHA
    delta: float = DELTA
    max_seeds: int = 10
    start_seeds: int | None = None
    add_seeds: int = 2

    def alpha_at(self, n: int) -> float:
        """The alpha of the CI a setting with n seeds is judged by."""
        if self.start_seeds is None:
            return self.alpha
        look = 1 + max(0, math.ceil((n - self.start_seeds) / self.add_seeds))
        return self.alpha / 2**look

    def schedule(self) -> range:
        """The seed counts a verdict can be reached at: a seed sweep's looks, else any count from 2."""
        if self.start_seeds is None:
            return range(2, self.max_seeds + 1)
        return range(self.start_seeds, self.max_seeds + 1, self.add_seeds)


def verdict(ci: tuple[float, float], delta: float) -> str:
    """Better or worse where the CI of Δ (setting - baseline, lower is better) excludes 0; equivalent where it
    lies within ±delta (no effect larger than delta); undecided otherwise."""
    low, high = ci
    if high < 0:
        return BETTER
    if low > 0:
        return WORSE
    return EQUIVALENT if -delta < low and high < delta else UNDECIDED


def seeds_needed(diff: float, sd: float, n: int, rule: Rule) -> int | None:
    """The fewest seeds per setting that would decide, if Δ and the spread stayed as observed (`sd`: of the
    paired differences; for Welch, of the two sides' variances summed); None: more than rule.max_seeds.

    Decided means a CI half-width t * sd / sqrt(n) below |Δ| (it excludes 0) or below delta - |Δ| (it lies
    within ±delta), at one of the rule's seed counts.
    """
    wanted = max(abs(diff), rule.delta - abs(diff))
    for m in rule.schedule():
        if m <= n:
            continue
        if t_critical(rule.alpha_at(m), m - 1) * sd / math.sqrt(m) < wanted:
            return m
    return None


Sample = list[tuple[str | None, float]]  # (seed, metric) of each run of a setting


@dataclass(frozen=True)
class Comparison:
    """Setting minus baseline: mean difference, its CI at level 1 - alpha, p-value, test, verdict, and the
    seeds an undecided setting would need (None: more than the budget); no CI, p or test under 2 runs."""

    diff: float
    ci: tuple[float, float] | None
    p: float | None
    test: str | None
    verdict: str  # BETTER | WORSE | EQUIVALENT | UNDECIDED, or `n/a: ...` saying why there is no test
    alpha: float | None = None
    seeds_needed: int | None = None


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


def against_baseline(runs: Sample, baseline: Sample, rule: Rule | None = None) -> Comparison:
    """Paired t-test where the seeds pair up (seed_pairs), else Welch's t-test; n/a under 2 runs a side.
    The CI's level is the rule's for this many seeds; so is the verdict."""
    rule = rule or Rule()
    values, base = [v for _, v in runs], [v for _, v in baseline]
    if not values or not base:  # every run of a side failed
        return Comparison(
            math.nan, None, None, None, "n/a: no runs" if not values else "n/a: no baseline runs"
        )
    if len(values) < 2 or len(base) < 2:
        why = "1 run" if len(values) < 2 else "1 baseline run"
        return Comparison(statistics.mean(values) - statistics.mean(base), None, None, None, f"n/a: {why}")
    pairs = seed_pairs(runs, baseline)
    test = PAIRED if pairs is not None else WELCH
    if pairs is not None:
        values, base = [v for v, _ in pairs], [b for _, b in pairs]
    n, alpha = len(values), rule.alpha_at(len(values))
    diff = statistics.mean(values) - statistics.mean(base)
    spread = [[v - b for v, b in pairs]] if pairs is not None else [values, base]
    if all(statistics.stdev(s) == 0 for s in spread):
        # t is 0/0 or ±inf: identical runs are no difference, a constant shift is one.
        ci = (diff, diff)
        return Comparison(diff, ci, 1.0 if diff == 0 else 0.0, test, verdict(ci, rule.delta), alpha)
    if pairs is not None:  # the differences' mean against 0, n - 1 degrees of freedom
        se, df = statistics.stdev(spread[0]) / math.sqrt(n), n - 1
    else:  # Welch: unequal variances, Welch–Satterthwaite degrees of freedom
        a, b = (statistics.variance(s) / len(s) for s in spread)
        se, df = math.sqrt(a + b), (a + b) ** 2 / (a**2 / (len(values) - 1) + b**2 / (len(base) - 1))
    half = t_critical(alpha, df) * se
    ci = (diff - half, diff + half)
    decided = verdict(ci, rule.delta)
    sd = math.sqrt(sum(statistics.variance(s) for s in spread))
    needed = seeds_needed(diff, sd, n, rule) if decided == UNDECIDED else None
    return Comparison(diff, ci, two_sided_p(diff / se, df), test, decided, alpha, needed)


# Student's t in pure Python, not scipy.stats: torchmetrics imports scipy.signal whenever scipy is installed,
# which added ~0.7 s to every run's start (tests/test_significance.py checks these against closed forms).
def two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` (any real > 0) degrees of freedom: the regularized incomplete
    beta function I_x(df/2, 1/2) at x = df / (df + t^2)."""
    return incomplete_beta(df / 2, 0.5, df / (df + t * t))


@lru_cache(maxsize=1024)
def t_critical(alpha: float, df: float) -> float:
    """The t whose two-sided p is `alpha`: a 1 - alpha CI is the mean ± t_critical * its standard error."""
    low, high = 0.0, 1.0
    while two_sided_p(high, df) > alpha:
        low, high = high, 2 * high
    while high - low > 1e-12 * high:  # bisection: two_sided_p falls as t grows
        mid = (low + high) / 2
        low, high = (mid, high) if two_sided_p(mid, df) > alpha else (low, mid)
    return (low + high) / 2


def incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, by its continued fraction (modified Lentz), as in
    Numerical Recipes' betai: the fraction converges fast for x < (a + 1) / (a + b + 2), and
    I_x(a, b) = 1 - I_{1-x}(b, a) covers the rest."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    if x > (a + 1) / (a + b + 2):
        return 1 - incomplete_beta(b, a, 1 - x)
    log_front = a * math.log(x) + b * math.log1p(-x) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)

    def nonzero(v: float) -> float:
        return v if abs(v) > 1e-300 else 1e-300

    c, d = 1.0, 1 / nonzero(1 - (a + b) * x / (a + 1))
    fraction = d
    for m in range(1, 10_000):  # about sqrt(a) terms for a large a
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        for term in (even, odd):
            d, c = 1 / nonzero(1 + term * d), nonzero(1 + term / c)
            fraction *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def verdict_cell(c: Comparison, max_seeds: int) -> str:
    """`undecided: ~7 seeds`, `undecided: > 10 seeds`, or the verdict as it is."""
    if c.verdict != UNDECIDED:
        return c.verdict
    return f"undecided: ~{c.seeds_needed} seeds" if c.seeds_needed else f"undecided: > {max_seeds} seeds"


def comparison_cells(comparison: Comparison | None, max_seeds: int) -> list[str]:
    """The table's Δ [CI], p, test and verdict cells; None is the baseline's row."""
    if comparison is None:
        return ["baseline", "", "", "baseline"]
    c = comparison
    delta = f"{c.diff:+.4f}" + (f" [{c.ci[0]:+.4f}, {c.ci[1]:+.4f}]" if c.ci is not None else "")
    p = "n/a" if c.p is None else "<0.001" if c.p < 0.001 else f"{c.p:.3f}"
    return [delta, p, c.test or "n/a", verdict_cell(c, max_seeds)]
