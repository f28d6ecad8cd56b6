"""A seed sweep's rounds: which seeds each setting runs next, until every setting is decided or at its budget,
and a simulation of the whole procedure on synthetic results.

Plain Python: the seed sweeper (src/hydra_plugins/tinytransformer_sweepers/seed_sweeper.py) plans its rounds
here, and scripts/verdict_simulation.py prints the simulation's false-verdict rate and power
(docs/verdicts.md has the figures).
"""

from __future__ import annotations

import random
from collections.abc import Hashable

from tinytransformer.comparison.significance import (
    BETTER,
    EQUIVALENT,
    UNDECIDED,
    WORSE,
    Comparison,
    Rule,
    against_baseline,
)

# Results so far, by setting (any name): seed -> its metric, None for a run that ended without one (failed).
Results = dict[Hashable, dict[int, float | None]]


def judge(results: Results, setting: Hashable, baseline: Hashable, rule: Rule) -> Comparison:
    """`setting` against `baseline` on the runs that have a metric, paired by seed."""

    def sample(name: Hashable) -> list[tuple[str | None, float]]:
        return [(str(seed), value) for seed, value in sorted(results[name].items()) if value is not None]

    return against_baseline(sample(setting), sample(baseline), rule)


def next_seeds(results: Results, baseline: Hashable, rule: Rule) -> dict[Hashable, list[int]]:
    """The seeds each setting of a seed sweep runs next; {} when the sweep is done.

    A setting without runs starts with seeds 1..start_seeds. An undecided one gets the seeds up to its next
    look, until max_seeds, unless one of its runs failed (more seeds would fail alike; compare_runs lists the
    failure). The baseline gets every seed another setting runs, so that each pair shares its seed (and with
    it the corpus and the initialisation).
    """
    start = rule.schedule()[0]
    plan: dict[Hashable, list[int]] = {}
    for setting, runs in results.items():
        if setting == baseline:
            continue
        n = len(runs)
        if n == 0:
            target = start
        elif n >= rule.max_seeds or None in runs.values():
            continue
        elif judge(results, setting, baseline, rule).verdict == UNDECIDED:
            target = next(m for m in rule.schedule() if m > n)
        else:
            continue
        plan[setting] = [seed for seed in range(1, target + 1) if seed not in runs]
    wanted = set(range(1, start + 1)).union(*plan.values(), *(runs.keys() for runs in results.values()))
    base_missing = sorted(wanted - results.get(baseline, {}).keys())
    if base_missing:
        plan[baseline] = base_missing
    return {setting: seeds for setting, seeds in plan.items() if seeds}


def simulate(
    effects: dict[str, float], rule: Rule, sd_seed: float, sd_noise: float, trials: int, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Run the whole seed sweep `trials` times on synthetic results: a run's metric is 1 + its seed's draw
    (N(0, sd_seed), the same for every setting) + its setting's true effect + N(0, sd_noise). `effects`
    names the settings, "baseline" (effect 0) among them. Returns, per setting, the share of sweeps that
    ended in each verdict and the mean number of seeds it ran."""
    rng = random.Random(seed)
    counts = {name: dict.fromkeys((BETTER, WORSE, EQUIVALENT, UNDECIDED, "seeds"), 0.0) for name in effects}
    for _ in range(trials):
        results = _synthetic_sweep(effects, rule, rng, sd_seed, sd_noise)
        for name, runs in results.items():
            if name != "baseline":
                counts[name][judge(results, name, "baseline", rule).verdict] += 1 / trials
            counts[name]["seeds"] += len(runs) / trials
    return counts


def _synthetic_sweep(
    effects: dict[str, float], rule: Rule, rng: random.Random, sd_seed: float, sd_noise: float
) -> Results:
    seed_draws: dict[int, float] = {}
    results: Results = {name: {} for name in effects}
    while plan := next_seeds(results, "baseline", rule):
        for name, seeds in plan.items():
            for seed in seeds:
                if seed not in seed_draws:
                    seed_draws[seed] = rng.gauss(0, sd_seed)
                results[name][seed] = 1 + seed_draws[seed] + effects[name] + rng.gauss(0, sd_noise)
    return results


class UncorrectedRule(Rule):
    """The same rounds judged at alpha at every look: what adding seeds until a CI clears does without a
    correction (the simulation's foil)."""

    def alpha_at(self, n: int) -> float:
        return self.alpha


def simulation_report(rule: Rule, sd_seed: float, sd_noise: float, trials: int, seed: int = 0) -> str:
    """A markdown table: for true effects from 0 to well past delta, the share of seed sweeps that end in
    each verdict, the false-verdict rate, the power and the mean seeds, with the rule and without its
    correction over looks (scripts/verdict_simulation.py)."""
    d = rule.delta
    effects = {"baseline": 0.0} | {f"{e:+.3f}": e for e in (0.0, -d / 2, -d, -2 * d, -5 * d, -10 * d)}
    lines = [
        "| rule | true Δ (nats) | better | worse | equivalent | undecided | false verdicts | power | mean seeds |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    uncorrected = UncorrectedRule(**{f: getattr(rule, f) for f in rule.__dataclass_fields__})
    for name, judged in (("corrected", rule), ("uncorrected", uncorrected)):
        shares = simulate(effects, judged, sd_seed, sd_noise, trials, seed)
        for label, effect in effects.items():
            if label == "baseline":
                continue
            s = shares[label]
            false = s[BETTER] + s[WORSE] if effect == 0 else s[WORSE] + (s[EQUIVALENT] if -effect >= d else 0)
            power = s[EQUIVALENT] if effect == 0 else s[BETTER] + (s[EQUIVALENT] if -effect < d else 0)
            cells = [s[BETTER], s[WORSE], s[EQUIVALENT], s[UNDECIDED], false, power]
            lines.append(
                f"| {name} | {effect:+.3f} | "
                + " | ".join(f"{c:.3f}" for c in cells)
                + f" | {s['seeds']:.1f} |"
            )
    return "\n".join(lines)


def simulation_main(argv: list[str]) -> None:
    """`[trials] [paired spread]`: print simulation_report for experiment=regularization's rule (3 seeds, +2
    per round, up to 9), by default at a paired spread of 0.02 nats: its runs show 0.016 to 0.035."""
    trials = int(argv[0]) if argv else 2000
    spread = float(argv[1]) if len(argv) > 1 else 0.02
    rule = Rule(start_seeds=3, add_seeds=2, max_seeds=9)
    print(f"{trials} simulated sweeps per row; seed spread 0.03 nats, paired spread {spread} nats; {rule}")
    print(simulation_report(rule, sd_seed=0.03, sd_noise=spread / 2**0.5, trials=trials, seed=0))
