"""Does a setting beat the baseline: a paired t-test where the seeds pair up, else Welch's, a 95 % CI and a
verdict; in compare_runs' table and json against the baseline it names, and a search ranked."""

import json
import math
import statistics
from pathlib import Path

import pytest
from tests.test_compare_runs import make_job, results, table_rows

from tinytransformer.comparison.compare import compare, compare_main
from tinytransformer.comparison.significance import (
    PAIRED,
    WELCH,
    against_baseline,
    comparison_cells,
    seed_pairs,
    t_critical,
    two_sided_p,
    verdict,
)


def tail_by_integration(t: float, df: float, steps: int = 20_000) -> float:
    """P(|T| >= |t|) for Student's t, by Simpson's rule over its density: an oracle that shares nothing with
    the continued fraction significance.py uses."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(x: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))

    h = abs(t) / steps
    weights = (4 if i % 2 else 2 for i in range(1, steps))
    simpson = density(0) + density(abs(t)) + sum(w * density(i * h) for i, w in enumerate(weights, 1))
    return 1 - 2 * simpson * h / 3


def test_the_t_distribution_matches_its_closed_forms_its_normal_limit_and_its_density():
    for t in (0.0, 0.3, 1.0, 2.5, 12.7, 300.0):
        assert two_sided_p(t, 1) == pytest.approx(1 - 2 * math.atan(t) / math.pi, rel=1e-9)  # Cauchy
        assert two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    for t in (0.3, 1.0, 2.5, 4.0):
        assert two_sided_p(t, 1e6) == pytest.approx(2 * statistics.NormalDist().cdf(-t), rel=1e-4)
    for t, df in ((0.7, 2.6), (2.1, 4.9592), (3.3, 7.25), (1.9, 40.5)):
        assert two_sided_p(t, df) == pytest.approx(tail_by_integration(t, df), rel=1e-8)
    # Quantiles: df 1 and 2 in closed form; the tables' t(0.975, 10) = 2.2281 and t(0.995, 30) = 2.7500.
    for alpha in (0.2, 0.05, 0.0125, 0.001):
        assert t_critical(alpha, 1) == pytest.approx(math.tan(math.pi * (1 - alpha) / 2), rel=1e-9)
        q = 1 - alpha
        assert t_critical(alpha, 2) == pytest.approx(q * math.sqrt(2 / (1 - q * q)), rel=1e-9)
    assert (round(t_critical(0.05, 10), 4), round(t_critical(0.01, 30), 4)) == (2.2281, 2.75)
    assert two_sided_p(t_critical(0.05, 4.9592), 4.9592) == pytest.approx(0.05, rel=1e-9)


BASELINE = [("1", 1.3), ("2", 1.4), ("3", 1.2)]
SETTING = [("1", 1.0), ("2", 1.2), ("3", 1.1)]  # per seed: -0.3, -0.2, -0.1 against the baseline


def test_a_side_whose_runs_all_failed_is_not_applicable_not_a_crash():
    for runs, base, why in (([], BASELINE, "n/a: no runs"), (SETTING, [], "n/a: no baseline runs")):
        compared = against_baseline(runs, base)
        assert compared.verdict == why and math.isnan(compared.diff) and compared.ci is None


def test_paired_test_is_the_t_interval_of_the_per_seed_differences():
    compared = against_baseline(SETTING, BASELINE)
    se = 0.1 / math.sqrt(3)  # the differences' sd over sqrt(n)
    q = 0.95  # df = 2: t(1 - alpha/2) = q * sqrt(2 / (1 - q^2)) in closed form
    half = q * math.sqrt(2 / (1 - q * q)) * se
    assert compared.test == PAIRED
    assert compared.diff == pytest.approx(-0.2)
    assert compared.ci == pytest.approx((-0.2 - half, -0.2 + half))
    assert compared.ci == pytest.approx((-0.448414, 0.048414), abs=1e-6)  # t(0.975, 2) = 4.3027
    t = 0.2 / se
    assert compared.p == pytest.approx(1 - t / math.sqrt(2 + t * t))  # df = 2 in closed form
    assert compared.p == pytest.approx(0.074180, abs=1e-6)
    # Undecided: a 4th seed would give a CI of half-width t(0.975, 3) * 0.1 / 2 = 0.159 < |Δ|, excluding 0.
    assert (compared.verdict, compared.alpha, compared.seeds_needed) == ("undecided", 0.05, 4)


def test_welch_test_uses_the_welch_satterthwaite_degrees_of_freedom():
    runs = [*SETTING, ("4", 1.3)]  # seed 4 has no baseline run: no pairing
    compared = against_baseline(runs, BASELINE)
    values, base = [v for _, v in runs], [v for _, v in BASELINE]
    a, b = statistics.variance(values) / 4, statistics.variance(base) / 3
    df = (a + b) ** 2 / (a**2 / 3 + b**2 / 2)
    diff = statistics.mean(values) - statistics.mean(base)
    assert compared.test == WELCH
    assert df == pytest.approx(4.9592, abs=1e-4)
    assert compared.diff == pytest.approx(-0.15)
    low, high = compared.ci
    assert (low + high) / 2 == pytest.approx(diff)
    # The CI's half-width is the t whose two-sided p is 0.05 at this df, times the standard error.
    assert tail_by_integration((high - low) / 2 / math.sqrt(a + b), df) == pytest.approx(0.05, rel=1e-7)
    assert compared.p == pytest.approx(tail_by_integration(diff / math.sqrt(a + b), df), rel=1e-7)
    assert compared.verdict == "undecided"


def test_runs_pair_only_when_every_seed_of_the_setting_has_a_baseline_run_of_that_seed():
    assert seed_pairs(SETTING, BASELINE) == [(1.0, 1.3), (1.2, 1.4), (1.1, 1.2)]
    assert seed_pairs(SETTING[:2], BASELINE) == [(1.0, 1.3), (1.2, 1.4)]  # the baseline may have more seeds
    assert seed_pairs([*SETTING[:2], ("4", 1.1)], BASELINE) is None  # seed 4 is missing
    assert seed_pairs([(None, 1.0), ("2", 1.2)], BASELINE) is None  # a run without a seed override
    assert seed_pairs([("1", 1.0), ("1", 1.2)], BASELINE) is None  # a repeated seed pairs by guess
    assert seed_pairs(SETTING, [*BASELINE, ("1", 1.5)]) is None
    assert against_baseline(SETTING[:2], BASELINE).test == PAIRED
    assert against_baseline(SETTING[:2], BASELINE).diff == pytest.approx(-0.25)  # seeds 1 and 2 only
    assert against_baseline([*SETTING[:2], ("4", 1.1)], BASELINE).test == WELCH


def test_a_clearly_lower_loss_is_better_and_a_clearly_higher_one_worse():
    lower = [("1", 1.0), ("2", 1.05), ("3", 0.95)]  # per seed: -0.30, -0.35, -0.25
    better = against_baseline(lower, BASELINE)
    assert better.verdict == "better" and better.ci[1] < 0 and better.p < 0.05
    worse = against_baseline(BASELINE, lower)
    assert worse.verdict == "worse" and worse.ci[0] > 0 and worse.p == pytest.approx(better.p)
    assert [verdict(ci, 0.01) for ci in ((-0.3, -0.1), (0.1, 0.3), (-0.1, 0.1), (-0.005, 0.009))] == [
        "better",
        "worse",
        "undecided",
        "equivalent",
    ]


def test_under_two_runs_a_side_there_is_no_test_only_the_difference():
    one = against_baseline([("1", 1.0)], BASELINE)
    assert (one.diff, one.ci, one.p, one.test, one.verdict) == (
        pytest.approx(-0.3),
        None,
        None,
        None,
        "n/a: 1 run",
    )
    assert against_baseline(SETTING, [("1", 1.3)]).verdict == "n/a: 1 baseline run"
    assert comparison_cells(one, 10) == ["-0.3000", "n/a", "n/a", "n/a: 1 run"]


def test_runs_without_spread_are_equivalent_when_equal_and_a_difference_when_shifted():
    same = against_baseline(BASELINE, BASELINE)
    assert (same.diff, same.ci, same.p, same.verdict) == (0, (0, 0), 1.0, "equivalent")
    base = [("1", 1.25), ("2", 1.5), ("3", 1.375)]  # exact in binary: every difference is exactly -0.125
    shifted = against_baseline([(s, v - 0.125) for s, v in base], base)
    assert (shifted.ci, shifted.p, shifted.verdict) == ((-0.125, -0.125), 0.0, "better")


def test_table_cells_show_the_difference_with_its_ci_the_p_value_the_test_and_the_verdict():
    assert comparison_cells(against_baseline(SETTING, BASELINE), 10) == [
        "-0.2000 [-0.4484, +0.0484]",
        "0.074",
        "paired",
        "undecided: ~4 seeds",
    ]
    hopeless = against_baseline([("1", 1.4), ("2", 1.2), ("3", 1.3)], BASELINE)  # Δ 0, spread 0.17
    assert comparison_cells(hopeless, 10)[-1] == "undecided: > 10 seeds"
    assert comparison_cells(None, 10) == ["baseline", "", "", "baseline"]


# best val loss per seed; none is the baseline though it is not the best row.
REGULARIZATION = {
    "none": {1: 1.30, 2: 1.40, 3: 1.20},
    "dropout": {1: 1.00, 2: 1.12, 3: 0.93},
    "gradient_clipping": {1: 1.31, 2: 1.38, 3: 1.24},
    "label_smoothing": {1: 1.60, 2: 1.72, 4: 1.65},  # seed 4 has no baseline run: Welch
    "weight_decay": {1: 1.25},
}


@pytest.fixture
def regularization_sweep(tmp_path) -> Path:
    """experiment=regularization's sweep as compare_runs sees it: `regularization=<name>,seed=<n>` jobs."""
    num = 0
    for name, seeds in REGULARIZATION.items():
        for seed, best in seeds.items():
            make_job(tmp_path, num, [f"regularization={name}", f"seed={seed}"], metrics=results(best))
            num += 1
    make_job(tmp_path, num, ["regularization=all", "seed=1"], failed="CUDA out of memory")
    return tmp_path


@pytest.fixture
def dropout_sweep(tmp_path) -> Path:
    """No setting named `none`: dropout 0 and 0.1 with seeds 1 and 2, dropout 0.2 with weight decay once."""
    for num, (overrides, best) in enumerate(
        [
            (["model.dropout=0", "seed=1"], 1.3),
            (["model.dropout=0", "seed=2"], 1.5),
            (["model.dropout=0.1", "seed=1"], 1.0),
            (["model.dropout=0.1", "seed=2"], 1.1),
            (["model.dropout=0.2", "optimizer.weight_decay=0.1", "seed=1"], 1.2),
        ]
    ):
        make_job(tmp_path, num, overrides, metrics=results(best))
    return tmp_path


def test_each_setting_is_tested_against_the_setting_named_none_by_default(regularization_sweep):
    text = compare(regularization_sweep)
    rows = {row[0].removeprefix("regularization="): row[8:] for row in table_rows(text)}
    assert rows["none"] == ["baseline", "", "", "baseline"]
    assert rows["dropout"][0].startswith("-0.2833 [") and rows["dropout"][2:] == ["paired", "better"]
    assert rows["gradient_clipping"][0].startswith("+0.0100 [")
    assert rows["gradient_clipping"][2] == "paired" and rows["gradient_clipping"][3].startswith("undecided")
    assert rows["label_smoothing"][2:] == ["Welch", "worse"]
    assert rows["weight_decay"] == ["-0.0500", "n/a", "n/a", "n/a: 1 run"]
    assert "baseline: regularization=none (choose another with baseline=<setting>)\n" in text
    assert (
        "by a 95 % CI: better or worse where it excludes 0, equivalent where it lies within ±δ = 0.01" in text
    )


def test_without_a_none_setting_the_first_row_is_the_baseline(dropout_sweep):
    rows = table_rows(compare(dropout_sweep))
    assert rows[0][0] == "dropout=0.1" and rows[0][8:] == ["baseline", "", "", "baseline"]
    assert [row[-1] for row in rows[1:]] == ["n/a: 1 run", "undecided: ~3 seeds"]


def test_the_baseline_key_names_a_setting_by_its_label_or_its_overrides(dropout_sweep):
    for name in (
        "dropout=0",
        "model.dropout=0",
        "dropout=0.2,weight_decay=0.1",
        "dropout=0.2, weight_decay=0.1",
        "weight_decay=0.1,dropout=0.2",  # in any order
    ):
        (baseline,) = [
            row[0] for row in table_rows(compare(dropout_sweep, baseline=name)) if row[8] == "baseline"
        ]
        assert set(baseline.replace(" ", "").split(",")) == set(
            name.removeprefix("model.").replace(" ", "").split(",")
        )


def test_a_baseline_no_setting_has_is_one_line_listing_the_settings(dropout_sweep, capsys):
    with pytest.raises(SystemExit) as exited:
        compare_main([str(dropout_sweep), "baseline=dropout=0.5"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "error: baseline=dropout=0.5: no setting of that name; the settings are: dropout=0.1; "
        "dropout=0.2, weight_decay=0.1; dropout=0\n"
    )


def test_the_json_names_the_baseline_and_holds_each_settings_test_and_every_run(regularization_sweep):
    compare(regularization_sweep)
    summary = json.loads((regularization_sweep / "comparison.json").read_text())
    assert (summary["baseline"], summary["metric"], summary["ranked_by"]) == (
        "regularization=none",
        "best_val_loss",
        None,
    )
    assert summary["rule"] == {"alpha": 0.05, "delta": 0.01, "max_seeds": 10}
    settings = {s["setting"]: s for s in summary["settings"]}
    assert settings["regularization=none"]["vs_baseline"] is None
    dropout = settings["regularization=dropout"]
    assert (dropout["rank"], dropout["seeds"], dropout["overrides"]) == (
        1,
        ["1", "2", "3"],
        ["regularization=dropout"],
    )
    assert dropout["best_val_loss"]["mean"] == pytest.approx(1.0167, abs=1e-4)
    assert dropout["vs_baseline"]["test"] == "paired" and dropout["vs_baseline"]["verdict"] == "better"
    low, high = dropout["vs_baseline"]["ci"]
    assert low < dropout["vs_baseline"]["diff"] < high < 0
    assert settings["regularization=weight_decay"]["vs_baseline"]["ci"] is None
    assert len(summary["runs"]) == 14 and summary["runs"][-1]["status"] == "failed"


def test_an_optuna_sweep_is_ranked_by_best_val_loss_its_objective(tmp_path):
    trials = [(0.1, 1.2), (0.2, 1.0), (0.3, 1.1), (0.4, 1.3)]  # (model.dropout, best val loss): one run each
    for num, (dropout, best) in enumerate(trials):
        make_job(tmp_path, num, [f"model.dropout={dropout}", "optimizer.lr=0.001"], metrics=results(best))
    assert table_rows(compare(tmp_path))[0][0] == "dropout=0.2"  # no study: no rank column
    (tmp_path / "optimization_results.yaml").write_text("name: optuna\nbest_value: 1.0\n")
    text = compare(tmp_path)
    assert [row[:3] for row in table_rows(text)] == [
        ["1", "dropout=0.2", "1"],
        ["2", "dropout=0.3", "1"],
        ["3", "dropout=0.1", "1"],
        ["4", "dropout=0.4", "1"],
    ]
    assert text.startswith("| rank | setting | runs | best val loss |")
    assert (
        "rank: by best val loss, the objective the Optuna study (optimization_results.yaml) minimizes" in text
    )
    summary = json.loads((tmp_path / "comparison.json").read_text())
    assert summary["ranked_by"] == "best_val_loss"
    assert [(s["rank"], s["setting"]) for s in summary["settings"]][:2] == [
        (1, "dropout=0.2"),
        (2, "dropout=0.3"),
    ]


def test_a_study_compared_on_a_metric_its_runs_lack_names_it_and_writes_strict_json(tmp_path):
    for num, (dropout, best) in enumerate([(0.1, 1.2), (0.2, 1.0), (0.3, 1.1)]):
        make_job(tmp_path, num, [f"model.dropout={dropout}"], metrics=results(best))
    (tmp_path / "optimization_results.yaml").write_text("name: optuna\nbest_value: 1.0\n")
    text = compare(tmp_path, metric="test_loss")  # no run has a test split
    assert "rank: by test loss at the best checkpoint (the Optuna study (optimization_results.yaml)" in text

    def not_json(constant):
        raise AssertionError(f"{constant} is not JSON")

    summary = json.loads((tmp_path / "comparison.json").read_text(), parse_constant=not_json)
    assert summary["ranked_by"] == "test_loss"
    compared = [s["vs_baseline"] for s in summary["settings"] if s["vs_baseline"] is not None]
    assert len(compared) == 2 and all(c["diff"] is None and c["verdict"].startswith("n/a") for c in compared)


def test_a_setting_and_seed_run_twice_counts_once_and_is_named_under_the_table(tmp_path):
    num = 0
    for (seed, base), (_, value) in zip(BASELINE, SETTING, strict=True):
        make_job(tmp_path, num, ["model.dropout=0", f"seed={seed}"], metrics=results(base))
        make_job(tmp_path, num + 1, ["model.dropout=0.1", f"seed={seed}"], metrics=results(value))
        num += 2
    # A re-run sweep that numbered its jobs otherwise ran dropout=0.1, seed=3 again.
    make_job(tmp_path, num, ["model.dropout=0.1", "seed=3"], metrics=results(1.1))
    text = compare(tmp_path, baseline="dropout=0")
    row = next(row for row in table_rows(text) if row[0] == "dropout=0.1")
    assert row[1] == "3" and row[-2] == PAIRED  # the copy would have made it 4 runs, and Welch's
    assert (
        f"- {num}_model.dropout=0.1,seed=3: the same setting and seed as 5_model.dropout=0.1,seed=3, counted once"
        in text
    )
