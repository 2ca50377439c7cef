"""The report's statistics against scipy / statsmodels called directly, and degenerate cases."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from l2bn.experiments.stats_tests import (
    adjust_family,
    describe_seeds,
    holm,
    paired_test,
    seeds_for_power,
)


@pytest.mark.parametrize(
    ("base", "cand"),
    [
        ([1.0, 2.0], [1.5, 2.1]),  # n = 2
        ([90.0, 90.5, 89.8], [90.6, 90.9, 90.1]),  # n = 3
        ([1.0, 2.0, 3.0, 4.5], [1.5, 2.1, 3.9, 4.8]),  # n = 4
    ],
)
def test_paired_t_statistics_match_scipy(base: list[float], cand: list[float]) -> None:
    result = paired_test(base, cand, "x")
    reference = stats.ttest_rel(cand, base)
    interval = reference.confidence_interval(confidence_level=0.95)
    diffs = [c - b for b, c in zip(base, cand, strict=True)]
    assert result.n == len(base) and result.df == len(base) - 1
    assert result.mean_diff == pytest.approx(statistics.fmean(diffs))
    assert result.sd_diff == pytest.approx(statistics.stdev(diffs))
    assert result.t == pytest.approx(reference.statistic)
    assert result.p == pytest.approx(reference.pvalue)
    assert (result.ci_low, result.ci_high) == pytest.approx((interval.low, interval.high))
    assert result.d_z == pytest.approx(statistics.fmean(diffs) / statistics.stdev(diffs))
    assert math.isnan(result.p_wilcoxon) and "not run" in result.wilcoxon_method


def test_one_pair_gives_no_test_and_says_so() -> None:
    result = paired_test([1.0], [2.0], "x")
    assert result.n == 1 and result.mean_diff == 1.0
    assert all(math.isnan(v) for v in (result.t, result.p, result.ci_low, result.d_z))
    assert not result.testable
    assert "1 pair: no test possible" in result.describe()


def test_zero_variance_of_differences_is_named_not_tested() -> None:
    # scipy would return t = inf, p = 0 for these constant, non-zero differences
    shifted = paired_test([1.0, 2.0, 3.0], [1.5, 2.5, 3.5], "x")
    assert shifted.mean_diff == pytest.approx(0.5) and shifted.sd_diff == 0.0
    assert math.isnan(shifted.t) and math.isnan(shifted.p) and math.isnan(shifted.d_z)
    assert "every seed differs by +0.5" in shifted.note and "t undefined" in shifted.note
    # rounding noise of the subtraction counts as equal differences
    noisy = paired_test([90.0, 90.3, 89.8], [90.6, 90.9, 90.4], "x")
    assert not noisy.testable and "zero variance" in noisy.note
    same = paired_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], "x")
    assert same.mean_diff == 0.0 and "identical on every seed" in same.note
    assert "t undefined" in same.describe()


def test_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="equal lengths"):
        paired_test([1.0, 2.0], [1.0], "x")
    with pytest.raises(ValueError, match="at least one pair"):
        paired_test([], [], "x")
    with pytest.raises(ValueError, match="NaN"):
        paired_test([1.0, math.nan], [1.0, 2.0], "x")


def test_wilcoxon_exact_without_ties() -> None:
    base = [0.0] * 6
    cand = [0.3, 1.1, -0.2, 0.7, 2.0, 0.9]  # distinct |d|, no zeros
    result = paired_test(base, cand, "x")
    reference = stats.wilcoxon(cand, method="exact")
    assert result.wilcoxon_method == "exact"
    assert result.p_wilcoxon == pytest.approx(reference.pvalue)
    assert result.wilcoxon_stat == pytest.approx(reference.statistic)
    # six pairs all in one direction: the smallest exact two-sided p, 2 / 2**6
    one_sided = paired_test(base, [abs(c) for c in cand], "x")
    assert one_sided.p_wilcoxon == pytest.approx(2 / 2**6)


def test_wilcoxon_with_ties_or_zeros_states_the_method_scipy_used() -> None:
    tied = [0.5, 0.5, -0.2, 0.7, 0.7, 0.9, 1.2]
    result = paired_test([0.0] * 7, tied, "x")
    # what scipy's default ("auto") does with ties and n <= 13: the permutation distribution
    assert result.p_wilcoxon == pytest.approx(stats.wilcoxon(tied).pvalue)
    permutation = stats.wilcoxon(tied, method=stats.PermutationMethod())
    assert result.p_wilcoxon == pytest.approx(permutation.pvalue)
    assert result.wilcoxon_method.startswith("permutation")
    assert "ties" in result.wilcoxon_method and "exact test not available" in result.wilcoxon_method

    zeros = [0.0, 0.4, -0.1, 0.8, 0.6, 1.1]
    with_zero = paired_test([0.0] * 6, zeros, "x")
    assert with_zero.p_wilcoxon == pytest.approx(stats.wilcoxon(zeros).pvalue)
    assert "1 zero(s)" in with_zero.wilcoxon_method

    many = [0.5, 0.5, -0.2, 0.7, 0.7, 0.9, 1.2, 0.1, 0.3, -0.4, 0.8, 0.2, 0.6, 1.0]  # n = 14
    large = paired_test([0.0] * 14, many, "x")
    assert large.p_wilcoxon == pytest.approx(stats.wilcoxon(many).pvalue)
    assert large.p_wilcoxon == pytest.approx(stats.wilcoxon(many, method="asymptotic").pvalue)
    assert large.wilcoxon_method.startswith("normal approximation")

    all_zero = paired_test([1.0] * 6, [1.0] * 6, "x")
    assert math.isnan(all_zero.p_wilcoxon) and "every difference is zero" in (
        all_zero.wilcoxon_method
    )


def test_holm_matches_statsmodels_and_known_values() -> None:
    pvalues = [0.01, 0.04, 0.03, 0.5]
    # by hand: sorted 0.01*4, 0.03*3, 0.04*2 (raised to the running max 0.09), 0.5*1
    assert holm(pvalues) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm(pvalues) == pytest.approx(list(multipletests(pvalues, method="holm")[1]))
    # untestable entries stay NaN and are not counted in the family
    mixed = holm([0.01, math.nan, 0.04])
    assert math.isnan(mixed[1])
    assert [mixed[0], mixed[2]] == pytest.approx(
        list(multipletests([0.01, 0.04], method="holm")[1])
    )
    assert all(math.isnan(p) for p in holm([math.nan, math.nan]))


def test_adjust_family_adjusts_t_and_wilcoxon_p_separately() -> None:
    base = [0.0] * 6
    results = [
        paired_test(base, [0.3, 1.1, -0.2, 0.7, 2.0, 0.9], "a"),
        paired_test(base, [1.3, 1.1, 1.2, 0.7, 2.0, 0.9], "b"),
        paired_test(base, [1.0] * 6, "c"),  # zero variance: no t-test p
    ]
    adjusted = adjust_family(results)
    expected_t = multipletests([results[0].p, results[1].p], method="holm")[1]
    assert [adjusted[0].p_adj, adjusted[1].p_adj] == pytest.approx(list(expected_t))
    assert math.isnan(adjusted[2].p_adj)
    expected_w = multipletests([r.p_wilcoxon for r in results], method="holm")[1]
    assert [a.p_wilcoxon_adj for a in adjusted] == pytest.approx(list(expected_w))


@pytest.mark.parametrize("d", [0.3, 0.8, 1.2, 2.5, 4.0])
def test_seeds_for_power_is_the_smallest_n_with_80_percent_power(d: float) -> None:
    n = seeds_for_power(effect=-d * 0.5, sd=0.5)  # sign does not matter
    analysis = TTestPower()
    expected = max(2, math.ceil(analysis.solve_power(effect_size=d, alpha=0.05, power=0.8)))
    assert n == expected
    assert analysis.power(effect_size=d, nobs=n, alpha=0.05) >= 0.8
    if n > 2:
        assert analysis.power(effect_size=d, nobs=n - 1, alpha=0.05) < 0.8


def _simulated_power(d_z: float, n: int, alpha: float, draws: int = 200_000) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs, by simulation."""
    rng = np.random.default_rng(1234)
    diffs = rng.normal(d_z, 1.0, size=(draws, n))
    t = diffs.mean(1) / (diffs.std(1, ddof=1) / math.sqrt(n))
    return float((np.abs(t) > stats.t.isf(alpha / 2, n - 1)).mean())


@pytest.mark.parametrize(
    ("d_z", "alpha"),
    [(5.98, 0.05), (8.42, 0.05), (10.86, 0.05), (12.82, 0.05), (20.0, 0.05), (13.0, 0.05 / 6)],
)
def test_seeds_for_power_for_large_effects_against_simulation(d_z: float, alpha: float) -> None:
    """Large effects, where statsmodels' noncentral t gives NaN or a wrong root (2 pairs
    for d_z = 10.86 though they have 77% power, 6 for d_z = 12.82 though 2 have 85%):
    the answer is the smallest n whose simulated power reaches 80% (margins >= 2 points)."""
    n = seeds_for_power(d_z, 1.0, alpha=alpha)
    assert _simulated_power(d_z, int(n), alpha) >= 0.8
    if n > 2:
        assert _simulated_power(d_z, int(n) - 1, alpha) < 0.8


def test_seeds_for_power_degenerate_cases() -> None:
    assert math.isinf(seeds_for_power(0.0, 1.0))
    assert describe_seeds(seeds_for_power(0.0, 1.0)) == "no effect observed"
    assert math.isnan(seeds_for_power(1.0, 0.0))  # zero variance: no estimate
    assert math.isnan(seeds_for_power(1.0, math.nan))  # one seed: no sd
    assert describe_seeds(math.nan) == "no estimate"
    # d_z = 20: statsmodels cannot solve (NaN power at 2 pairs), yet 2 pairs have 97% power
    assert seeds_for_power(20.0, 1.0) == 2
    assert describe_seeds(seeds_for_power(1e-5, 1.0)) == "> 1,000,000 seeds"


def test_wilcoxon_keeps_ties_that_subtraction_roundoff_would_break() -> None:
    base = [90.0, 90.3, 89.8, 91.0, 88.5, 90.1]
    cand = [90.6, 90.9, 90.1, 91.3, 89.0, 90.8]  # differences 0.6, 0.6, 0.3, 0.3, 0.5, 0.7
    raw = [c - b for b, c in zip(base, cand, strict=True)]
    assert raw[0] != raw[1]  # roundoff: 0.6 and 0.6 differ in floating point
    result = paired_test(base, cand, "x")
    assert "ties" in result.wilcoxon_method
    rounded = [round(d, 10) for d in raw]
    assert result.p_wilcoxon == pytest.approx(stats.wilcoxon(rounded).pvalue)
    assert result.wilcoxon_stat == pytest.approx(stats.wilcoxon(rounded).statistic)


@pytest.mark.parametrize("p", [0.0496, 0.04996, 0.0499999, 0.0504, 0.05004, 0.05])
def test_a_printed_p_value_is_on_the_same_side_of_alpha_as_the_p_value(p: float) -> None:
    """Three decimals round 0.0496 (significant) and 0.0504 (not) both to "0.050": a table
    row and a claim line read "Holm p = 0.050" beside "supported". Near 0.05 the printed
    value keeps the digits that put it on its own side of alpha."""
    from l2bn.experiments.stats_tests import ALPHA, fmt_p, p_is

    text = fmt_p(p)
    assert (float(text) < ALPHA) == (p < ALPHA), text
    assert p_is(p) == f"= {text}"
    assert abs(float(text) - p) <= 0.0005  # still p, rounded


def test_p_values_away_from_alpha_keep_three_decimals() -> None:
    from l2bn.experiments.stats_tests import fmt_p

    assert [fmt_p(p) for p in (0.0123, 0.0449, 0.0551, 0.5, 1.0)] == [
        "0.012",
        "0.045",
        "0.055",
        "0.500",
        "1.000",
    ]
    assert fmt_p(0.0009) == "< 0.001" and fmt_p(math.nan) == "-"
