"""Is the L2BN-vs-BN difference larger than seed noise? A paired t-test over seeds.

Runs of two norms with the same seed share the data order, augmentation and (for the same
model) the initial weights of every layer but the norms, so they are paired by seed: the test
works on the per-seed differences. With the paper's 3-5 seeds a rank test cannot reach
significance (the exact Wilcoxon signed-rank test's smallest two-sided p-value is
``2 / 2**n``: 0.25 with 3 pairs, 0.0625 with 5), so we use the paired t-test
(``scipy.stats.ttest_rel``), which assumes roughly normal differences, and give the mean
difference with its 95% confidence interval from the t distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

WHY_PAIRED_T = (
    "Paired t-test over seeds (scipy.stats.ttest_rel): runs with the same seed share data order "
    "and augmentation, so they are compared pairwise; with few seeds a signed-rank test cannot "
    "reach significance (its smallest two-sided p-value is 0.25 with 3 pairs), so the t-test "
    "(normal differences assumed) is used; the interval is the 95% t confidence interval of the "
    "mean difference."
)


@dataclass(frozen=True)
class PairedResult:
    """Mean of ``candidate - baseline`` over paired seeds, its 95% CI, t and two-sided p."""

    metric: str
    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    t: float
    p: float

    def describe(self, unit: str = "") -> str:
        if self.n < 2:
            return f"{self.metric}: diff {self.mean_diff:+.3f}{unit} (n={self.n}: no test)"
        if math.isnan(self.t):
            return (
                f"{self.metric}: diff {self.mean_diff:+.3f}{unit} identical on every seed "
                f"(n={self.n}; t undefined)"
            )
        return (
            f"{self.metric}: diff {self.mean_diff:+.3f}{unit} "
            f"[95% CI {self.ci_low:+.3f}, {self.ci_high:+.3f}], "
            f"t({self.n - 1}) = {self.t:.2f}, p = {self.p:.3f}"
        )


def paired_t_test(
    baseline: Sequence[float], candidate: Sequence[float], metric: str = "value"
) -> PairedResult:
    """Paired t-test of ``candidate`` against ``baseline`` (same seed at the same index)."""
    if len(baseline) != len(candidate):
        raise ValueError(
            f"paired test needs equal lengths, got {len(baseline)} and {len(candidate)}"
        )
    diffs = [float(c) - float(b) for b, c in zip(baseline, candidate, strict=True)]
    n = len(diffs)
    if n == 0:
        raise ValueError("paired test needs at least one pair")
    mean = sum(diffs) / n
    if n < 2:
        return PairedResult(metric, n, mean, math.nan, math.nan, math.nan, math.nan)
    from scipy import stats

    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0.0:
        return PairedResult(metric, n, mean, mean, mean, math.nan, math.nan)
    result = stats.ttest_rel(candidate, baseline)
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return PairedResult(
        metric, n, mean, mean - half, mean + half, float(result.statistic), float(result.pvalue)
    )
