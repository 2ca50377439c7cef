"""Every claim of the paper tested: each norm against the baseline, paired over seeds.

The paper's argument rests on six quantities (Table 1, Figures 1 and 7): L2BN raises the
best accuracy, lowers the intra-angle on training and on test data, raises the inter-angle,
and lowers IIR on training and on test data. For every candidate norm against the baseline
of its model (BN, or placement ``none``), each quantity gets the paired statistics of
:mod:`l2bn.experiments.stats_tests`; the t-test p-values of one comparison form a family
adjusted with Holm's method, and so do its Wilcoxon p-values. Per epoch, the same paired
t-test runs on each per-epoch quantity; those p-values are Holm-adjusted over the epochs of
one quantity of one comparison.

The seeds needed for 80% power (two-sided paired t-test) are computed at
``alpha = 0.05 / m``, ``m`` the number of tested quantities of the comparison: Holm's
strictest step, so that a claim reaching that power passes the adjustment whatever the
other quantities do (``alpha = 0.05`` alone would promise significance that Holm then
takes away).

Each claim then gets a verdict, by the sign of the mean difference and the Holm-adjusted
t-test p-value (alpha 0.05):

* ``supported``: the paper's direction, adjusted p < 0.05;
* ``same direction, not significant``;
* ``opposite direction`` (adjusted p >= 0.05; the line gives p);
* ``opposite direction, significant``;
* ``no test possible: 1 seed`` / ``no test possible: zero variance`` (every seed differs by
  the same amount, t undefined) / ``no difference`` (mean difference 0, or every
  difference 0 up to rounding) / ``not measured`` (the runs have no such metric, e.g.
  ``metrics: false``).

The paper's direction for L2BN (any placement) is the claim above, except where the
paper's own row for the model disagrees with it: the intra-angle falls "for most of the
models except the DenseNet" (Table 1: DenseNet-40-12 higher on training and test data,
DenseNet-BC-100-12 unchanged on test data); there, as for the other norms, the row's sign is
the expected direction, and a row without a difference makes no claim. For the other norms
the paper makes no claim; where one of its tables has the same model, dataset and norm, the
sign of that table's difference is the expected direction ("higher in paper Table 5"),
otherwise the verdict is ``no paper claim: significant`` / ``no paper claim: not
significant``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from l2bn.experiments import paper_tables
from l2bn.experiments.stats_tests import (
    ALPHA,
    PairedResult,
    adjust_family,
    describe_seeds,
    holm,
    p_is,
    paired_test,
    seeds_for_power,
)
from l2bn.experiments.summary import VariantSummary, model_label, status_text


@dataclass(frozen=True)
class Quantity:
    key: str  # best_acc or a metrics.jsonl key (final epoch)
    label: str  # row label in the tests table
    unit: str
    paper_key: str  # column of paper_tables.csv
    direction: int  # +1: the paper says L2BN raises it, -1: lowers it
    claim: str  # the paper's claim for L2BN, in words
    digits: int


QUANTITIES = (
    Quantity("best_acc", "best accuracy", " pp", "acc_mean", +1, "raises accuracy", 2),
    Quantity(
        "intra_train", "intra-angle train", "°", "intra_train", -1,
        "lowers the intra-angle on training data", 2,
    ),
    Quantity(
        "intra_test", "intra-angle test", "°", "intra_test", -1,
        "lowers the intra-angle on test data", 2,
    ),
    Quantity("inter", "inter-angle", "°", "inter", +1, "raises the inter-angle", 2),
    Quantity("iir_train", "IIR train", "", "iir_train", -1, "lowers IIR on training data", 3),
    Quantity("iir_test", "IIR test", "", "iir_test", -1, "lowers IIR on test data", 3),
)  # fmt: skip
QUANTITY = {q.key: q for q in QUANTITIES}
# per-epoch keys tested (paired t-test per epoch, Holm over the epochs of one key)
EPOCH_KEYS = ("test_acc", "intra_train", "intra_test", "inter", "iir_train", "iir_test")

SUPPORTED = "supported"
SAME_NS = "same direction, not significant"
OPPOSITE = "opposite direction"
OPPOSITE_SIG = "opposite direction, significant"
NO_TEST_N1 = "no test possible: 1 seed"
NO_TEST_VAR = "no test possible: zero variance"
NO_DIFF = "no difference"
NOT_MEASURED = "not measured"
NO_CLAIM_SIG = "no paper claim: significant"
NO_CLAIM_NS = "no paper claim: not significant"


@dataclass
class QuantityTest:
    """One quantity of one comparison: the test, the expectation, the paper's numbers."""

    quantity: Quantity
    result: PairedResult | None  # None: not measured on every paired seed
    expected: int | None = None  # +1 / -1 / None
    expected_source: str = ""  # "paper's claim", "paper Table 5", ""
    paper_table: int | None = None
    paper_base: float = math.nan
    paper_cand: float = math.nan
    seeds_observed: float = math.nan
    seeds_paper: float = math.nan
    verdict: str = NOT_MEASURED

    @property
    def paper_diff(self) -> float:
        return self.paper_cand - self.paper_base

    @property
    def sign_agrees(self) -> bool | None:
        """Same sign of our mean difference and the paper's; None when there is nothing to
        compare or either difference is zero (``sign_text`` says which)."""
        if self.sign_text in ("yes", "no"):
            return self.sign_text == "yes"
        return None

    @property
    def sign_text(self) -> str:
        """``yes`` / ``no`` / ``ours zero`` / ``paper zero`` / ``-`` (nothing to compare)."""
        if self.result is None or math.isnan(self.paper_diff):
            return "-"
        ours, theirs = self.result.mean_diff, self.paper_diff
        if ours == 0.0 or self.result.identical:
            return "ours zero"
        if theirs == 0.0:
            return "paper zero"
        return "yes" if (ours > 0) == (theirs > 0) else "no"

    @property
    def significant(self) -> bool:
        return self.result is not None and self.result.p_adj < ALPHA


@dataclass
class Comparison:
    """One norm against the baseline of its model, paired by seed."""

    preset: str
    model: str
    dataset: str
    baseline: str
    candidate: str
    seeds: list[int]
    tests: list[QuantityTest]
    base_variant: VariantSummary | None = None
    cand_variant: VariantSummary | None = None
    paper_rows: tuple[paper_tables.PaperRow, paper_tables.PaperRow] | None = None
    # per-epoch key -> [(epoch, result with p_adj over the epochs)]
    epochs: dict[str, list[tuple[int, PairedResult]]] = field(default_factory=dict)
    # seeds of either arm left out of the pairing, with why ("seed 123: L2BN unfinished ...")
    left_out: list[str] = field(default_factory=list)
    # the model as the report names it: ``demo/resnet20`` among several names
    shown_model: str = ""

    @property
    def family_size(self) -> int:
        return sum(1 for t in self.tests if t.result is not None and t.result.testable)

    def significant_epochs(self, key: str) -> list[int]:
        return [e for e, r in self.epochs.get(key, []) if r.p_adj < ALPHA]


def verdict(result: PairedResult | None, expected: int | None) -> str:
    """The claim's verdict (module docstring) from the adjusted test and the direction."""
    if result is None:
        return NOT_MEASURED
    if result.n < 2:
        return NO_TEST_N1
    if result.mean_diff == 0.0 or result.identical:
        return NO_DIFF
    if not result.testable:
        return NO_TEST_VAR
    significant = result.p_adj < ALPHA
    if expected is None:
        return NO_CLAIM_SIG if significant else NO_CLAIM_NS
    if (result.mean_diff > 0) == (expected > 0):
        return SUPPORTED if significant else SAME_NS
    return OPPOSITE_SIG if significant else OPPOSITE


def _paired_values(
    base: VariantSummary, cand: VariantSummary, seeds: list[int], key: str
) -> tuple[list[float], list[float]] | None:
    b = [base.value(s, key) for s in seeds]
    c = [cand.value(s, key) for s in seeds]
    if any(math.isnan(v) for v in b + c):
        return None
    return b, c


def _epoch_tests(
    base: VariantSummary, cand: VariantSummary, seeds: list[int]
) -> dict[str, list[tuple[int, PairedResult]]]:
    epochs: dict[str, list[tuple[int, PairedResult]]] = {}
    last = min(len(v.runs[s].rows) for v in (base, cand) for s in seeds)
    for key in EPOCH_KEYS:
        rows = []
        for epoch in range(1, last + 1):
            b = [base.at_epoch(s, key, epoch) for s in seeds]
            c = [cand.at_epoch(s, key, epoch) for s in seeds]
            if any(math.isnan(v) for v in b + c):
                continue
            rows.append((epoch, paired_test(b, c, key, wilcoxon=False)))
        if rows:
            adjusted = holm([r.p for _, r in rows])
            rows = [(e, r.with_adjusted(p)) for (e, r), p in zip(rows, adjusted, strict=True)]
            epochs[key] = rows
    return epochs


def _arm_status(variant: VariantSummary, seed: int) -> str:
    record = variant.record(seed)
    if record is None:
        return f"no {variant.label} run"
    return f"{variant.label} {status_text(record)}"


def left_out_seeds(base: VariantSummary, cand: VariantSummary) -> list[str]:
    """Every seed of either arm that is not paired, with why: ``seed 123: L2BN unfinished
    (1 of 2 epochs)``, ``seed 999: no BN run``. Only seeds where both runs finished (and
    did not diverge) are paired."""
    paired = set(base.seeds) & set(cand.seeds)
    every = {r.seed for v in (base, cand) for r in v.records}
    lines = []
    for seed in sorted(every - paired):
        why = [_arm_status(v, seed) for v in (base, cand) if seed not in v.runs]
        lines.append(f"seed {seed}: {'; '.join(why)}")
    return lines


def compare_variants(base: VariantSummary, cand: VariantSummary) -> Comparison | None:
    """All quantities of ``cand`` against ``base`` over their common seeds (None: no seed),
    counting only runs that finished every epoch (``left_out`` names the others)."""
    seeds = sorted(set(base.seeds) & set(cand.seeds))
    if not seeds:
        return None
    dataset = cand.dataset or base.dataset
    cand_norm = paper_tables.norm_key(cand.norm, cand.norm_kwargs)
    base_norm = paper_tables.norm_key(base.norm, base.norm_kwargs)
    pair = paper_tables.find_pair(
        dataset, cand.model, (base_norm, base.placement), (cand_norm, cand.placement)
    )
    raw: list[PairedResult | None] = []
    for q in QUANTITIES:
        values = _paired_values(base, cand, seeds, q.key)
        raw.append(None if values is None else paired_test(*values, q.label))
    tested = [r for r in raw if r is not None]
    adjusted = iter(adjust_family(tested))
    results = [None if r is None else next(adjusted) for r in raw]
    family = sum(1 for r in tested if r.testable)
    tests = []
    for q, result in zip(QUANTITIES, results, strict=True):
        test = QuantityTest(q, result)
        if pair is not None:
            p_base, p_cand = pair
            test.paper_table = p_cand.table
            test.paper_base = p_base.value(q.paper_key)
            test.paper_cand = p_cand.value(q.paper_key)
        # the paper's claim, unless its own row for this model says otherwise (the
        # intra-angle "for most of the models except the DenseNet": Table 1)
        excepted = not math.isnan(test.paper_diff) and test.paper_diff * q.direction <= 0.0
        # (L2BN placed nowhere, Table 4's "none", holds no L2BN layer: no claim of its own)
        claims = cand.norm == "l2bn" and cand.placement != "none"
        if claims and not excepted:
            test.expected, test.expected_source = q.direction, "paper's claim"
        elif not math.isnan(test.paper_diff) and test.paper_diff != 0.0:
            test.expected = 1 if test.paper_diff > 0 else -1
            test.expected_source = f"paper Table {test.paper_table}"
        if result is not None:
            alpha = ALPHA / max(1, family)  # Holm's strictest step: passes whatever the rest
            test.seeds_observed = seeds_for_power(result.mean_diff, result.sd_diff, alpha=alpha)
            test.seeds_paper = seeds_for_power(test.paper_diff, result.sd_diff, alpha=alpha)
        test.verdict = verdict(result, test.expected)
        tests.append(test)
    return Comparison(
        cand.preset,
        cand.model,
        dataset,
        base.label,
        cand.label,
        seeds,
        tests,
        base_variant=base,
        cand_variant=cand,
        paper_rows=pair,
        epochs=_epoch_tests(base, cand, seeds),
        left_out=left_out_seeds(base, cand),
        shown_model=cand.model,
    )


def uncompared(summaries: list[VariantSummary], comparisons: list[Comparison]) -> list[str]:
    """Why each variant that has no comparison has none: ``L2BN vs BN (resnet20): not
    compared, no seed has a finished run of both (seed 999: no BN run; ...)``."""
    compared = {(c.preset, c.model, c.candidate) for c in comparisons}
    lines = []
    by_model: dict[tuple[str, str], list[VariantSummary]] = {}
    for s in summaries:
        by_model.setdefault((s.preset, s.model), []).append(s)
    presets = [preset for preset, _ in by_model]
    for (preset, name), variants in by_model.items():
        model = model_label(preset, name, presets)
        baselines = [v for v in variants if v.is_baseline]
        for other in variants:
            if baselines and other is baselines[0]:
                continue
            if (preset, name, other.label) in compared:
                continue
            if not baselines:
                lines.append(
                    f"{other.label} ({model}): not compared, no baseline (BN, or placement "
                    "none) among these runs"
                )
                continue
            base = baselines[0]
            why = "; ".join(left_out_seeds(base, other)) or "no runs"
            lines.append(
                f"{other.label} vs {base.label} ({model}): not compared, no seed has a "
                f"finished run of both ({why})"
            )
    return lines


def compare_to_baseline(summaries: list[VariantSummary]) -> list[Comparison]:
    """Every non-baseline variant against its model's baseline (first baseline found)."""
    comparisons = []
    by_model: dict[tuple[str, str], list[VariantSummary]] = {}
    for s in summaries:
        by_model.setdefault((s.preset, s.model), []).append(s)
    presets = [preset for preset, _ in by_model]
    for variants in by_model.values():
        baselines = [v for v in variants if v.is_baseline]
        if not baselines:
            continue
        base = baselines[0]
        for other in variants:
            if other is base:
                continue
            comparison = compare_variants(base, other)
            if comparison is not None:
                comparison.shown_model = model_label(base.preset, base.model, presets)
                comparisons.append(comparison)
    return comparisons


def _diff(test: QuantityTest) -> str:
    q, r = test.quantity, test.result
    assert r is not None
    return f"{r.mean_diff:+.{q.digits}f}{q.unit}"


def _seeds_at(seeds: float, what: str) -> str:
    if math.isinf(seeds):
        return f"none would do at {what} (no effect observed)"
    if math.isnan(seeds):
        return f"no estimate at {what}"
    return f"{describe_seeds(seeds)} at {what}"


def seeds_text(test: QuantityTest, n: int) -> str:
    """'seeds for 80% power: 7 seeds at the observed effect (d_z = ...), ...; we have 3'."""
    r = test.result
    if r is None or not r.testable:
        return ""
    q = test.quantity
    observed = "the observed effect" + ("" if math.isnan(r.d_z) else f" (d_z = {r.d_z:+.2f})")
    parts = [_seeds_at(test.seeds_observed, observed)]
    if not math.isnan(test.paper_diff):
        paper = f"{test.paper_diff:+.{q.digits}f}{q.unit}"
        if test.paper_diff == 0.0:
            parts.append(f"the paper's Table {test.paper_table} shows no difference ({paper})")
        else:
            parts.append(
                _seeds_at(test.seeds_paper, f"the paper's (Table {test.paper_table}: {paper})")
            )
    return f"seeds for 80% power: {', '.join(parts)}; we have {n}"


def claim_line(test: QuantityTest, n: int) -> str:
    """The claim in words with its verdict, difference, adjusted p and seeds needed."""
    q, r = test.quantity, test.result
    if test.expected_source == "paper's claim":
        what = q.claim
    elif test.expected is not None:
        higher = "higher" if test.expected > 0 else "lower"
        what = f"{q.label}: {higher} in {test.expected_source}"
    elif test.verdict in (NO_CLAIM_SIG, NO_CLAIM_NS):
        what = q.label  # the verdict says "no paper claim" itself
    else:
        what = f"{q.label}: no paper claim"
    if r is None:
        return f"{what}: not measured"
    text = f"{what}: {test.verdict}"
    if test.verdict == NO_DIFF and not r.testable:
        return f"{text} (identical on every seed: no test)"
    if test.verdict in (NO_TEST_N1, NO_TEST_VAR):
        return f"{text} ({_diff(test)}; {r.note})"
    text += f" ({_diff(test)}, Holm p {p_is(r.p_adj)}"
    if test.verdict in (OPPOSITE, OPPOSITE_SIG):
        text += f", unadjusted p {p_is(r.p)}"
    text += ")"
    if not test.significant:
        text += f"; {seeds_text(test, n)}"
    return text


def claim_lines(comparison: Comparison) -> list[str]:
    header = (
        f"{comparison.candidate} vs {comparison.baseline} ({comparison.shown_model}, "
        f"{len(comparison.seeds)} seed(s)):"
    )
    n = len(comparison.seeds)
    return [header, *(f"  {claim_line(t, n)}" for t in comparison.tests)]
