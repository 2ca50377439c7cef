"""Is a norm's difference from the baseline larger than seed noise? Paired tests over seeds.

Runs of two norms with the same seed share the data order, augmentation and (for the same
model) the initial weights of every layer but the norms, so they are paired by seed: every
statistic here works on the per-seed differences ``d = candidate - baseline``.

* ``paired_test``: mean difference with the 95% confidence interval of
  ``scipy.stats.ttest_rel(...).confidence_interval()``, Cohen's ``d_z = mean(d) / sd(d)``,
  the paired t-test, and, with 6 or more pairs, the Wilcoxon signed-rank test (exact when
  the differences have no ties and no zeros).
* ``holm``: Holm's step-down adjustment of a family of p-values
  (``statsmodels.stats.multitest.multipletests``).
* ``seeds_for_power``: seeds needed for 80% power of the two-sided paired t-test at a given
  effect, from the observed standard deviation of the differences
  (``statsmodels.stats.power.TTestPower``; up to 100 pairs the exact power of
  ``paired_t_power``, which stays finite for large effects where statsmodels does not).

Degenerate inputs give a documented result, never an exception or a silent number:

* ``n = 1``: no standard deviation, so no interval, no t-test, no effect size
  (``note`` says "1 pair: no test possible").
* zero variance of the differences (every seed differs by the same amount; also all
  differences zero): t, its p-value, ``d_z`` and the interval are undefined (NaN) and
  ``note`` says so. Differences count as equal when their standard deviation is below
  ``1e-10`` times the largest absolute input value (floating-point noise of a subtraction),
  where scipy would return ``t = inf`` or warn about catastrophic cancellation. For the
  same reason the Wilcoxon test ranks the differences rounded to that resolution, so that
  differences tied in exact arithmetic stay tied.
* Wilcoxon: not run below 6 pairs (its smallest two-sided p-value is ``2 / 2**n``: 0.25
  with 3 pairs, 0.0625 with 5, 0.03125 with 6). Without ties or zero differences the exact
  null distribution is used (``method="exact"``); with ties or zeros the exact distribution
  does not apply, and we pass what scipy's ``method="auto"`` would pick: the permutation
  (sign-flip) distribution for up to 13 pairs (all ``2**n`` sign flips, so still exact for
  the tied ranks), the normal approximation above. ``wilcoxon_method`` names it.
* power with zero observed effect: no finite number of seeds (``math.inf``, described as
  "no effect observed").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

ALPHA = 0.05
POWER = 0.80
MIN_WILCOXON_PAIRS = 6
ZERO_VARIANCE_RTOL = 1e-10
MAX_SEEDS_REPORTED = 1_000_000

WHY_TESTS = (
    "Tests: runs with the same seed share data order, augmentation and initial weights, so "
    "each norm is compared with the baseline seed by seed (differences candidate - baseline). "
    "Mean difference with its 95% t confidence interval (scipy ttest_rel), Cohen's d_z = "
    "mean / sd of the differences, the paired t-test, and with 6 or more pairs the Wilcoxon "
    "signed-rank test (exact without ties; with ties or zero differences scipy's "
    "permutation distribution, named in the table); below 6 pairs the signed-rank test "
    "cannot reach p < 0.05 (smallest p = 2/2^n: 0.25 with 3 pairs). The p-values of one "
    "comparison (its 6 quantities) are adjusted together with Holm's method "
    "(statsmodels; the Wilcoxon p-values separately, which needs 8+ pairs to get below "
    "0.05 over six quantities); a claim is 'supported' when its Holm-adjusted t-test "
    "p < 0.05 and the difference has the paper's sign. 'Seeds for 80% power': the number "
    "of seeds at which the paired t-test (two-sided, alpha 0.05/m for a family of m "
    "quantities, so that the claim survives Holm) would detect the observed difference, or "
    "the paper's difference for the same row, given the observed sd of the differences."
)
# kept for callers of the previous API
WHY_PAIRED_T = WHY_TESTS


@dataclass(frozen=True)
class PairedResult:
    """Statistics of ``candidate - baseline`` over paired seeds.

    ``p`` is the paired t-test's two-sided p-value (NaN when no test is possible: see
    ``note``); ``p_wilcoxon`` is NaN below 6 pairs. ``p_adj`` / ``p_wilcoxon_adj`` are
    filled in by ``with_adjusted`` (Holm over a family) and are NaN until then.
    """

    metric: str
    n: int
    mean_diff: float
    sd_diff: float
    ci_low: float
    ci_high: float
    t: float
    p: float
    d_z: float
    wilcoxon_stat: float = math.nan
    p_wilcoxon: float = math.nan
    wilcoxon_method: str = ""
    note: str = ""
    p_adj: float = math.nan
    p_wilcoxon_adj: float = math.nan

    @property
    def df(self) -> int:
        return self.n - 1

    @property
    def identical(self) -> bool:
        """True when every difference is zero (up to rounding: see the module docstring)."""
        return self.n > 1 and self.note.startswith("identical")

    @property
    def testable(self) -> bool:
        """True when the t-test has a p-value (n >= 2 and the differences vary)."""
        return not math.isnan(self.p)

    def with_adjusted(self, p_adj: float, p_wilcoxon_adj: float = math.nan) -> PairedResult:
        from dataclasses import replace

        return replace(self, p_adj=p_adj, p_wilcoxon_adj=p_wilcoxon_adj)

    def describe(self, unit: str = "") -> str:
        """One line: difference, interval, d_z, t-test, Wilcoxon and the adjusted p."""
        head = f"{self.metric}: diff {self.mean_diff:+.3f}{unit}"
        if not self.testable:
            return f"{head} ({self.note})"
        text = (
            f"{head} [95% CI {self.ci_low:+.3f}, {self.ci_high:+.3f}], d_z = {self.d_z:+.2f}, "
            f"t({self.df}) = {self.t:.2f}, p {p_is(self.p)}"
        )
        if not math.isnan(self.p_adj):
            text += f", Holm p {p_is(self.p_adj)}"
        if not math.isnan(self.p_wilcoxon):
            text += f"; Wilcoxon ({self.wilcoxon_method}) p {p_is(self.p_wilcoxon)}"
        return text


def p_is(p: float) -> str:
    """``= 0.012`` or ``< 0.001`` (for "p = ..." phrases); ``= -`` for NaN."""
    text = fmt_p(p)
    return text if text.startswith("<") else f"= {text}"


def fmt_p(p: float) -> str:
    """A p-value with three decimals, or ``< 0.001``; ``-`` for NaN. Just below alpha it
    keeps the decimals that leave it below (``0.0496``, not ``0.050``, which would read as
    not significant beside a "supported")."""
    if math.isnan(p):
        return "-"
    if p < 0.001:
        return "< 0.001"
    for digits in range(3, 16):
        text = f"{p:.{digits}f}"
        if (float(text) < ALPHA) == (p < ALPHA):
            return text
    return repr(p)


def _wilcoxon(diffs: Sequence[float], quantum: float) -> tuple[float, float, str]:
    """(statistic, two-sided p, method) of scipy's signed-rank test on ``diffs`` (n >= 6).

    The differences are first rounded to multiples of ``quantum`` (the zero-variance
    tolerance), as scipy's documentation advises: ``c - b`` carries subtraction roundoff
    that would rank truly tied differences as distinct. The test uses ranks and signs only,
    so passing the integer multiples gives the same statistic and p-value.
    """
    from scipy import stats

    steps = [float(round(d / quantum)) for d in diffs]
    nonzero = [abs(d) for d in steps if d != 0.0]
    zeros = len(steps) - len(nonzero)
    ties = len(set(nonzero)) < len(nonzero)
    if not nonzero:
        return math.nan, math.nan, "not possible: every difference is zero"
    why = ", ".join(w for w, c in (("ties", ties), (f"{zeros} zero(s)", zeros)) if c)
    if not ties and not zeros:
        result = stats.wilcoxon(steps, method="exact")
        method = "exact"
    elif len(steps) <= 13:
        result = stats.wilcoxon(steps, method=stats.PermutationMethod())
        method = f"permutation, {why}: exact test not available"
    else:
        result = stats.wilcoxon(steps, method="asymptotic")
        method = f"normal approximation, {why}: exact test not available"
    return float(result.statistic), float(result.pvalue), method


def paired_test(
    baseline: Sequence[float],
    candidate: Sequence[float],
    metric: str = "value",
    *,
    wilcoxon: bool = True,
) -> PairedResult:
    """Paired statistics of ``candidate`` against ``baseline`` (same seed at the same index).

    ``wilcoxon=False`` skips the signed-rank test (the per-epoch tests use the t-test only).
    """
    if len(baseline) != len(candidate):
        raise ValueError(
            f"paired test needs equal lengths, got {len(baseline)} and {len(candidate)}"
        )
    base = [float(b) for b in baseline]
    cand = [float(c) for c in candidate]
    if any(math.isnan(v) for v in base + cand):
        raise ValueError(f"paired test of {metric!r}: NaN among the values")
    diffs = [c - b for b, c in zip(base, cand, strict=True)]
    n = len(diffs)
    if n == 0:
        raise ValueError("paired test needs at least one pair")
    mean = math.fsum(diffs) / n
    nan = math.nan
    if n < 2:
        return PairedResult(
            metric, n, mean, nan, nan, nan, nan, nan, nan, note="1 pair: no test possible"
        )
    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1))
    scale = max(abs(v) for v in base + cand)
    quantum = ZERO_VARIANCE_RTOL * scale if scale > 0 else 1.0
    if not wilcoxon:
        signed_rank: tuple[float, float, str] = (nan, nan, "not run")
    elif n >= MIN_WILCOXON_PAIRS:
        signed_rank = _wilcoxon(diffs, quantum)
    else:
        signed_rank = (nan, nan, f"not run: {n} pairs < {MIN_WILCOXON_PAIRS}")
    if sd <= quantum:
        if all(d == 0.0 for d in diffs) or abs(mean) <= quantum:
            note = "identical on every seed: t undefined (zero variance)"
        else:
            note = f"every seed differs by {mean:+.4g}: t undefined (zero variance)"
        return PairedResult(metric, n, mean, 0.0, nan, nan, nan, nan, nan, *signed_rank, note=note)
    from scipy import stats

    result = stats.ttest_rel(cand, base)
    interval = result.confidence_interval(confidence_level=0.95)
    return PairedResult(
        metric,
        n,
        mean,
        sd,
        float(interval.low),
        float(interval.high),
        float(result.statistic),
        float(result.pvalue),
        mean / sd,
        *signed_rank,
    )


def paired_t_test(
    baseline: Sequence[float], candidate: Sequence[float], metric: str = "value"
) -> PairedResult:
    """Former name of ``paired_test``."""
    return paired_test(baseline, candidate, metric)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values of a family (NaN entries stay NaN and are not counted)."""
    finite = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    adjusted = [math.nan] * len(pvalues)
    if not finite:
        return adjusted
    import gc

    from statsmodels.stats.multitest import multipletests

    # multipletests(method="holm") calls gc.collect(), 0.2 s with torch loaded, per family;
    # freezing the existing objects for the call makes that collection scan only its own.
    gc.freeze()
    try:
        _, corrected, _, _ = multipletests([pvalues[i] for i in finite], alpha=ALPHA, method="holm")
    finally:
        gc.unfreeze()
    for i, p in zip(finite, corrected, strict=True):
        adjusted[i] = float(p)
    return adjusted


def adjust_family(results: Sequence[PairedResult]) -> list[PairedResult]:
    """The results with Holm-adjusted t-test and Wilcoxon p-values over the whole family."""
    p_t = holm([r.p for r in results])
    p_w = holm([r.p_wilcoxon for r in results])
    return [r.with_adjusted(a, b) for r, a, b in zip(results, p_t, p_w, strict=True)]


EXACT_POWER_MAX_PAIRS = 100


def paired_t_power(d_z: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs at standardized effect ``d_z``.

    Integrated over the distribution of the sample standard deviation (``s / sigma`` is
    chi with ``n - 1`` degrees of freedom over ``sqrt(n - 1)``): ``E[Phi(nc - c s) +
    Phi(-nc - c s)]``, ``nc = |d_z| sqrt(n)``, ``c`` the critical t. Unlike scipy's noncentral
    t (which statsmodels uses) it stays finite for large ``d_z`` at few pairs.
    """
    from scipy import special, stats

    df = n - 1
    nc = abs(d_z) * math.sqrt(n)
    crit = float(stats.t.isf(alpha / 2, df))
    spread = stats.chi(df, scale=1.0 / math.sqrt(df))
    value = spread.expect(
        lambda s: special.ndtr(nc - crit * s) + special.ndtr(-nc - crit * s),
        epsabs=1e-12,
        epsrel=1e-10,
    )
    return min(1.0, max(0.0, float(value)))


def seeds_for_power(
    effect: float, sd: float, *, power: float = POWER, alpha: float = ALPHA
) -> float:
    """Seeds (pairs) for ``power`` in the two-sided paired t-test of a mean difference.

    ``effect`` is the mean difference, ``sd`` the standard deviation of the differences;
    the standardized effect is ``d_z = effect / sd`` and the answer is
    ``ceil(TTestPower().solve_power(d_z, alpha, power))``, at least 2 (the fewest pairs a
    t-test can use). Where that is NaN or at most 100 pairs, the answer is instead the
    smallest ``n >= 2`` with :func:`paired_t_power` at least ``power``: for large effects
    (``|d_z|`` above about 4) scipy's noncentral t, which statsmodels uses, gives NaN or
    wrong powers at few pairs, and statsmodels then returns NaN or a wrong root (2 pairs
    for ``d_z = 10.9``, which have 77% power; 6 for ``d_z = 12.8``, where 2 have 85%).
    Returns ``math.inf`` when ``effect`` is zero ("no effect observed") and NaN when ``sd``
    is unknown or zero (no estimate possible).
    """
    if math.isnan(effect) or math.isnan(sd) or sd <= 0.0:
        return math.nan
    if effect == 0.0:
        return math.inf
    import statsmodels.tools.sm_exceptions  # noqa: F401  (sets its warning filters on import)
    from statsmodels.stats.power import TTestPower

    d = abs(effect) / sd
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            nobs = float(
                TTestPower().solve_power(
                    effect_size=d, alpha=alpha, power=power, alternative="two-sided"
                )
            )
        except (ValueError, RuntimeError, ArithmeticError):
            nobs = math.nan
        if math.isfinite(nobs) and nobs > EXACT_POWER_MAX_PAIRS:
            return float(math.ceil(nobs - 1e-9))
        # The power grows with n: bisect for the smallest n in [2, max + 1] that reaches it.
        low, high = 2, EXACT_POWER_MAX_PAIRS + 1
        if paired_t_power(d, high, alpha) < power:
            return math.nan
        while low < high:
            mid = (low + high) // 2
            if paired_t_power(d, mid, alpha) >= power:
                high = mid
            else:
                low = mid + 1
        return float(low)
    return math.nan


def describe_seeds(seeds: float) -> str:
    """Seeds-needed figure in words."""
    if math.isnan(seeds):
        return "no estimate"
    if math.isinf(seeds):
        return "no effect observed"
    if seeds > MAX_SEEDS_REPORTED:
        return f"> {MAX_SEEDS_REPORTED:,} seeds"
    return f"{int(seeds):,} seeds"
