"""The comparison report from saved runs: the paper's Table 1 layout, every claim tested.

Sections of ``report.txt`` / ``report.md``:

1. The table: per model and norm, accuracy as mean +- std over seeds of each run's best
   test accuracy (as in section 4.1), then intra-angle on train and test data, inter-angle,
   and IIR on train and test data (supplement eqs. 2-3, paper eq. 4) at the final epoch,
   averaged over seeds.
2. Tests: each norm against the baseline, paired over seeds, for the six quantities (mean
   difference, 95% CI, Cohen's d_z, t-test, Wilcoxon with 6+ pairs, Holm-adjusted p, seeds
   for 80% power): :mod:`l2bn.experiments.claims`.
3. Claims: one line per claim of the paper, in words.
4. The paper beside us: where the run's dataset and model have a row in the paper's Tables
   1-6, its numbers next to ours and whether the differences have the same sign.
5. Per-epoch evidence: the epochs at which the paired difference is significant
   (Holm-adjusted over epochs); the figures mark them.

Between the table and the tests: the runs left out (unfinished, diverged, unreadable), the
comparisons that could not be made and why, and the settings block.

``report.csv`` is one long table with a ``section`` column: ``summary`` (one row per
variant and quantity, with the paper's value where a row matches), ``test`` (one row per
comparison and quantity: all statistics, verdict, seeds needed, the paper's difference and
sign agreement), ``epoch`` (one row per comparison, per-epoch quantity and epoch), ``run``
(one row per run or unreadable directory, with its status and epochs) and ``setting``. The
``epochs`` column gives the epoch count of the runs summarized or tested.

Runs of one name and model are reported together only when they differ in the norm, its
placement and the seed alone (:func:`l2bn.experiments.identity.comparison_settings`);
otherwise :func:`write_report` refuses, naming the settings that differ.

Like with like: the table and the tests use finished runs only (every planned epoch, a
``done`` marker), paired by the seed each run recorded. Unfinished runs, runs that
diverged (:mod:`l2bn.experiments.train`) and directories that could not be read are named
in the report with why they were left out (``report.csv`` section ``run``). A settings
block says how the runs were trained and measured (:mod:`report_settings`; ``report.csv``
section ``setting``).

The report folder holds the current report only: ``report.manifest.json`` lists the files
the report wrote, and the next report removes those it does not write again (the figures
of metrics turned off since, say); a report that refuses removes the previous one, which
would otherwise pass for a report of the runs as they are now; files the report did not
write are never touched.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
import textwrap
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from l2bn.experiments import paper_tables
from l2bn.experiments.claims import (
    EPOCH_KEYS,
    QUANTITIES,
    Comparison,
    QuantityTest,
    claim_lines,
    compare_to_baseline,
    uncompared,
)
from l2bn.experiments.identity import require_comparable
from l2bn.experiments.report_settings import settings_csv_rows, settings_lines
from l2bn.experiments.runs import RunRecord
from l2bn.experiments.stats_tests import WHY_TESTS, describe_seeds, fmt_p
from l2bn.experiments.summary import (
    ANGLE_KEYS,
    NORM_LABELS,
    VariantSummary,
    model_label,
    norm_label,
    run_status,
    status_text,
    summarize,
)

__all__ = [
    "ANGLE_KEYS",
    "COLUMNS",
    "NORM_LABELS",
    "Comparison",
    "VariantSummary",
    "build_report",
    "compare_to_baseline",
    "norm_label",
    "summarize",
    "write_report",
]

COLUMNS = (
    "Model",
    "Norm",
    "Seeds",
    "Epochs",
    "Accuracy(%)",
    "Intra(train)",
    "Intra(test)",
    "Inter",
    "IIR train",
    "IIR test",
)
TEST_COLUMNS = (
    "Quantity",
    "Mean diff",
    "95% CI",
    "d_z",
    "t",
    "p",
    "Holm p",
    "Wilcoxon p",
    "Holm p (W)",
    "Seeds 80%: obs / paper",
)
EPOCH_LABELS = {
    "test_acc": "test accuracy",
    "intra_train": "intra-angle train",
    "intra_test": "intra-angle test",
    "inter": "inter-angle",
    "iir_train": "IIR train",
    "iir_test": "IIR test",
}
CSV_COLUMNS = (
    "section",
    "preset",
    "dataset",
    "model",
    "baseline",
    "variant",
    "norm",
    "placement",
    "quantity",
    "epoch",
    "epochs",
    "status",
    "run_dir",
    "value",
    "n",
    "seeds",
    "mean",
    "std",
    "mean_diff",
    "sd_diff",
    "ci_low",
    "ci_high",
    "d_z",
    "t",
    "df",
    "p",
    "p_holm",
    "wilcoxon_stat",
    "p_wilcoxon",
    "p_wilcoxon_holm",
    "wilcoxon_method",
    "significant",
    "expected_direction",
    "verdict",
    "seeds_80_observed",
    "seeds_80_paper",
    "paper_table",
    "paper_value",
    "paper_std",
    "paper_baseline",
    "paper_diff",
    "sign_agrees",
    "note",
)


def _fmt(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _signed(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:+.{digits}f}"


def _over(s: VariantSummary, key: str, seeds: Iterable[int] | None = None) -> str:
    """`` (n=2 of 3)`` when the mean of ``key`` over ``seeds`` (default every finished one)
    leaves out seeds without a value (:meth:`VariantSummary.measured_seeds`), else ``""``
    (every seed has one, or none has: the cell reads ``-``)."""
    chosen = s.seeds if seeds is None else list(seeds)
    measured = len(s.measured_seeds(key, chosen))
    return f" (n={measured} of {len(chosen)})" if 0 < measured < len(chosen) else ""


def table_rows(summaries: list[VariantSummary]) -> list[list[str]]:
    """One row per variant with a finished run; a variant whose every finished run
    diverged shows ``diverged`` (its runs are named below the table). A mean over fewer
    seeds than the Seeds column (finished runs without a value) says over how many:
    ``41.20 (n=2 of 3)``, and :func:`partial_mean_lines` says which seed lacks it, and why."""
    rows = []
    presets = [s.preset for s in summaries]
    for s in summaries:
        if not s.runs and not s.diverged:
            continue  # nothing finished: named among the runs left out
        mean, std = s.acc_mean_std()
        if not s.runs:
            acc = "diverged"
        else:
            acc = f"{mean:.2f} ± {std:.2f}" if not math.isnan(std) else f"{mean:.2f}"
            acc += _over(s, "best_acc")
        seeds = str(len(s.seeds))
        if s.diverged:
            seeds += f" (+{len(s.diverged)} diverged)"
        angles = [
            _fmt(s.final_mean(key), digits) + _over(s, key)
            for key, digits in (
                ("intra_train", 2),
                ("intra_test", 2),
                ("inter", 2),
                ("iir_train", 3),
                ("iir_test", 3),
            )
        ]
        label = model_label(s.preset, s.model, presets)
        rows.append([label, s.label, seeds, s.epochs_done(), acc, *angles])
    return rows


def partial_mean_lines(summaries: list[VariantSummary]) -> list[str]:
    """One line per variant and set of seeds left out of some of its table means because
    their finished runs have no value at the final epoch (e.g. angles undefined: collapsed
    features): which quantities, over how many seeds, and why."""
    presets = [s.preset for s in summaries]
    lines = []
    for s in summaries:
        groups: dict[tuple[int, str], list[str]] = {}  # (seeds averaged, why) -> labels
        for q in QUANTITIES:
            count = len(s.measured_seeds(q.key))
            if 0 < count < len(s.seeds):
                groups.setdefault((count, _missing(s, q.key)), []).append(q.label)
        for (count, why), labels in groups.items():
            lines.append(
                f"{s.label} ({model_label(s.preset, s.model, presets)}): {', '.join(labels)} "
                f"averaged over {count} of {len(s.seeds)} finished seeds (n={count} of "
                f"{len(s.seeds)}); no value at the final epoch for {why}"
            )
    return lines


def _missing(
    s: VariantSummary, key: str, seeds: Iterable[int] | None = None, prefix: str = ""
) -> str:
    """``seed 122: angles undefined (...)`` for every finished seed (of ``seeds``, default
    all) without a value of ``key`` (``; `` between them, each after ``prefix``)."""
    chosen = s.seeds if seeds is None else [seed for seed in seeds if seed in s.runs]
    measured = s.measured_seeds(key, chosen)
    return "; ".join(
        f"{prefix}seed {seed}: {s.missing_reason(seed, key)}"
        for seed in chosen
        if seed not in measured
    )


def format_text_table(rows: list[list[str]], columns: tuple[str, ...] = COLUMNS) -> str:
    widths = [max(len(str(c)), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def format_markdown_table(rows: list[list[str]], columns: tuple[str, ...] = COLUMNS) -> str:
    lines = ["| " + " | ".join(c.strip() for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ---- tests ----------------------------------------------------------------------------


def comparison_header(comp: Comparison) -> str:
    k = comp.family_size
    family = f"Holm over {k} tested quantit{'y' if k == 1 else 'ies'}" if k else "nothing testable"
    return (
        f"{comp.candidate} vs {comp.baseline} ({comp.shown_model}, {len(comp.seeds)} seed(s) "
        f"paired: {', '.join(str(s) for s in comp.seeds)}), {family}"
    )


def _seeds_cell(test: QuantityTest) -> str:
    r = test.result
    if r is None or not r.testable:
        return "-"
    observed = describe_seeds(test.seeds_observed)
    paper = "-" if math.isnan(test.paper_diff) else describe_seeds(test.seeds_paper)
    return f"{observed} / {paper}"


def test_columns(comp: Comparison) -> tuple[str, ...]:
    """The tests table's columns: ``t(df)``; the Wilcoxon columns only when it ran."""
    columns = list(TEST_COLUMNS)
    columns[4] = f"t({len(comp.seeds) - 1})"
    if not _wilcoxon_ran(comp):
        del columns[7:9]
    return tuple(columns)


def _wilcoxon_ran(comp: Comparison) -> bool:
    return len(comp.seeds) >= 6


def _why_missing(comp: Comparison, key: str) -> str:
    """Which paired seeds lack ``key`` and why (``missing_reason``), else ``metrics off?``
    when the comparison carries no summaries to ask."""
    reasons = [
        _missing(variant, key, comp.seeds, f"{variant.label} ")
        for variant in (comp.base_variant, comp.cand_variant)
        if variant is not None
    ]
    return "; ".join(r for r in reasons if r) or "metrics off?"


def test_rows(comp: Comparison) -> tuple[list[list[str]], list[str]]:
    """Rows of the tests table (``test_columns``), and notes (untestable quantities,
    the Wilcoxon method where not exact)."""
    rows, notes = [], []
    wilcoxon = _wilcoxon_ran(comp)
    width = len(test_columns(comp))
    for test in comp.tests:
        q, r = test.quantity, test.result
        label = f"{q.label}{' (' + q.unit.strip() + ')' if q.unit.strip() else ''}"
        if r is None:
            rows.append([label, *["-"] * (width - 1)])
            notes.append(
                f"{q.label}: not measured on every paired seed ({_why_missing(comp, q.key)})"
            )
            continue
        digits = q.digits + 1
        ci = "-" if math.isnan(r.ci_low) else f"[{r.ci_low:+.{digits}f}, {r.ci_high:+.{digits}f}]"
        row = [
            label,
            _signed(r.mean_diff, digits),
            ci,
            _signed(r.d_z, 2),
            _signed(r.t, 2),
            fmt_p(r.p),
            fmt_p(r.p_adj),
            fmt_p(r.p_wilcoxon),
            fmt_p(r.p_wilcoxon_adj),
            _seeds_cell(test),
        ]
        if not wilcoxon:
            del row[7:9]
        rows.append(row)
        if r.note:
            notes.append(f"{q.label}: {r.note}")
        if r.wilcoxon_method and r.wilcoxon_method != "exact" and r.n >= 6:
            notes.append(f"{q.label}: Wilcoxon {r.wilcoxon_method}")
    notes += [f"left out: {line}" for line in comp.left_out]
    if not wilcoxon:
        notes.append(f"Wilcoxon signed-rank: not run with {len(comp.seeds)} pair(s) (needs 6+)")
    elif any(t.result is not None and t.result.wilcoxon_method == "exact" for t in comp.tests):
        notes.append("Wilcoxon: exact null distribution where no method is named")
    return rows, notes


# ---- the paper beside us ---------------------------------------------------------------


def _mean_std(value: tuple[float, float], digits: int, with_std: bool) -> str:
    mean, std = value
    if not with_std or math.isnan(std) or math.isnan(mean):
        return _fmt(mean, digits)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def paper_block(comp: Comparison) -> tuple[str, list[list[str]] | None, tuple[str, ...]]:
    """(heading, rows or None when the paper has no such row, columns)."""
    base_v, cand_v = comp.base_variant, comp.cand_variant
    if comp.paper_rows is None:
        covered = ", ".join(paper_tables.datasets())
        return (
            f"The paper beside us, {comp.candidate} vs {comp.baseline}: the paper has no row "
            f"for {comp.shown_model} on {comp.dataset or 'this dataset'} with these norms (its "
            f"tables cover {covered}).",
            None,
            (),
        )
    p_base, p_cand = comp.paper_rows
    ours_epochs = cand_v.epochs_planned if cand_v is not None else 0
    seeds = f"{p_cand.seeds} seed(s)" if p_cand.seeds else "seeds not stated"
    heading = (
        f"The paper beside us, {comp.candidate} vs {comp.baseline} ({comp.shown_model} on "
        f"{comp.dataset}; paper Table {p_cand.table}, {p_cand.paper_model}: "
        f"{p_base.paper_label} vs {p_cand.paper_label}, {p_cand.epochs} epochs, {seeds}; "
        f"ours: {ours_epochs} epochs, {len(comp.seeds)} seed(s)):"
    )
    columns = (
        "Quantity",
        f"{comp.baseline} ours",
        f"{comp.baseline} paper",
        f"{comp.candidate} ours",
        f"{comp.candidate} paper",
        "diff ours",
        "diff paper",
        "same sign",
    )
    rows = []
    for test in comp.tests:
        q = test.quantity
        if math.isnan(test.paper_base) and math.isnan(test.paper_cand):
            continue
        # over the paired seeds, as the heading and the difference (not every finished seed)
        none = (math.nan, math.nan)
        ours_b = base_v.mean_std(q.key, comp.seeds) if base_v is not None else none
        ours_c = cand_v.mean_std(q.key, comp.seeds) if cand_v is not None else none
        paper_b = (test.paper_base, p_base.value("acc_std") if q.key == "best_acc" else math.nan)
        paper_c = (test.paper_cand, p_cand.value("acc_std") if q.key == "best_acc" else math.nan)
        std = q.key == "best_acc"  # the paper gives mean ± std for accuracy only
        diff = test.result.mean_diff if test.result is not None else math.nan
        # a mean over fewer of the paired seeds (some without a value) says over how many
        over_b = _over(base_v, q.key, comp.seeds) if base_v is not None else ""
        over_c = _over(cand_v, q.key, comp.seeds) if cand_v is not None else ""
        rows.append(
            [
                q.label,
                _mean_std(ours_b, q.digits, std) + over_b,
                _mean_std(paper_b, q.digits, std),
                _mean_std(ours_c, q.digits, std) + over_c,
                _mean_std(paper_c, q.digits, std),
                _signed(diff, q.digits),
                _signed(test.paper_diff, q.digits),
                "NO" if test.sign_text == "no" else test.sign_text,
            ]
        )
    return heading, rows, columns


# ---- per-epoch evidence -----------------------------------------------------------------


def _ranges(epochs: list[int]) -> str:
    parts: list[str] = []
    start = prev = None
    for e in [*epochs, None]:
        if e is not None and prev is not None and e == prev + 1:
            prev = e
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = e
    return ", ".join(parts)


def epoch_lines(comp: Comparison) -> list[str]:
    lines = []
    for key in EPOCH_KEYS:
        rows = comp.epochs.get(key)
        if not rows:
            continue
        significant = comp.significant_epochs(key)
        testable = sum(1 for _, r in rows if r.testable)
        if significant:
            signs = {r.mean_diff > 0 for e, r in rows if e in significant}
            direction = (
                ("higher" if signs == {True} else "lower") if len(signs) == 1 else "mixed signs"
            )
            epochs = "epoch" if len(significant) == 1 else "epochs"
            what = f"{epochs} {_ranges(significant)} ({direction} than {comp.baseline})"
        else:
            what = "no epoch"
        lines.append(f"{EPOCH_LABELS[key]}: {what} of {len(rows)} ({testable} testable)")
    return lines


# ---- CSV ---------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 6) -> str:
    if value is None or math.isnan(value):
        return ""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def _count(value: float | None) -> str:
    """A whole count (seeds needed) written exactly: ``1234567``, not ``1.23457e+06``;
    ``inf`` (no effect observed) and empty (no estimate) as :func:`_num` writes them."""
    if value is None or not math.isfinite(value) or value != int(value):
        return _num(value)
    return str(int(value))


def _result_cells(result: Any) -> dict[str, str]:
    if result is None:
        return {}
    return {
        "n": str(result.n),
        "mean_diff": _num(result.mean_diff),
        "sd_diff": _num(result.sd_diff),
        "ci_low": _num(result.ci_low),
        "ci_high": _num(result.ci_high),
        "d_z": _num(result.d_z),
        "t": _num(result.t),
        "df": str(result.df) if result.testable else "",
        "p": _num(result.p),
        "p_holm": _num(result.p_adj),
        "wilcoxon_stat": _num(result.wilcoxon_stat),
        "p_wilcoxon": _num(result.p_wilcoxon),
        "p_wilcoxon_holm": _num(result.p_wilcoxon_adj),
        "wilcoxon_method": result.wilcoxon_method,
        "significant": "" if math.isnan(result.p_adj) else str(result.p_adj < 0.05).lower(),
        "note": result.note,
    }


def _paired_epochs(comp: Comparison) -> str:
    """Epochs of the runs a comparison pairs (all finished: one number)."""
    counts = sorted(
        {
            len(v.runs[seed].rows)
            for v in (comp.base_variant, comp.cand_variant)
            if v is not None
            for seed in comp.seeds
            if seed in v.runs
        }
    )
    return "/".join(str(c) for c in counts)


def _variant_columns(s: VariantSummary) -> dict[str, str]:
    """The ``report.csv`` columns that name a variant."""
    return {
        "preset": s.preset,
        "dataset": s.dataset,
        "model": s.model,
        "variant": s.label,
        "norm": s.norm,
        "placement": s.placement,
    }


def run_rows(
    summaries: list[VariantSummary], ignored: Iterable[tuple[Path, str]] = ()
) -> list[dict]:
    """``report.csv`` rows of section ``run``: every run with its status (``finished``,
    ``diverged``, ``unfinished``; ``ignored`` for directories that could not be read)."""
    rows: list[dict] = []
    for s in summaries:
        for record in s.records:
            rows.append(
                {
                    "section": "run",
                    **_variant_columns(s),
                    "seeds": str(record.seed),
                    "epochs": str(len(record.rows)),
                    "status": run_status(record),
                    "run_dir": str(record.directory),
                    "note": status_text(record),
                }
            )
    for directory, why in ignored:
        rows.append({"section": "run", "status": "ignored", "run_dir": str(directory), "note": why})
    return rows


def csv_rows(
    summaries: list[VariantSummary],
    comparisons: list[Comparison],
    ignored: Iterable[tuple[Path, str]] = (),
) -> list[dict]:
    rows: list[dict] = []
    for s in summaries:
        if not s.runs and not s.diverged:
            continue
        paper = paper_tables.find_row(
            s.dataset, s.model, paper_tables.norm_key(s.norm, s.norm_kwargs), s.placement
        )
        for q in QUANTITIES:
            mean, std = s.mean_std(q.key)
            measured = s.measured_seeds(q.key)
            row = {
                "section": "summary",
                **_variant_columns(s),
                "quantity": q.key,
                "epochs": s.epochs_done(),
                "n": str(len(measured)),
                "seeds": " ".join(str(x) for x in measured),
                "mean": _num(mean),
                "std": _num(std),
            }
            notes = []
            if s.diverged:
                notes.append(f"diverged, left out: seed {', '.join(map(str, sorted(s.diverged)))}")
            if measured and len(measured) < len(s.seeds):
                notes.append(
                    f"mean over {len(measured)} of {len(s.seeds)} finished seeds; no value at "
                    f"the final epoch for {_missing(s, q.key)}"
                )
            if notes:
                row["note"] = "; ".join(notes)
            if paper is not None:
                row["paper_table"] = str(paper.table)
                row["paper_value"] = _num(paper.value(q.paper_key))
                if q.key == "best_acc":
                    row["paper_std"] = _num(paper.value("acc_std"))
            rows.append(row)
    for comp in comparisons:
        common = {
            "preset": comp.preset,
            "dataset": comp.dataset,
            "model": comp.model,
            "baseline": comp.baseline,
            "variant": comp.candidate,
            "norm": comp.cand_variant.norm if comp.cand_variant else "",
            "placement": comp.cand_variant.placement if comp.cand_variant else "",
            "seeds": " ".join(str(s) for s in comp.seeds),
            "epochs": _paired_epochs(comp),
        }
        for test in comp.tests:
            agrees = test.sign_agrees
            row = {
                "section": "test",
                **common,
                "quantity": test.quantity.key,
                **_result_cells(test.result),
                "expected_direction": {1: "+", -1: "-"}.get(test.expected or 0, ""),
                "verdict": test.verdict,
                "seeds_80_observed": _count(test.seeds_observed),
                "seeds_80_paper": _count(test.seeds_paper),
                "paper_table": "" if test.paper_table is None else str(test.paper_table),
                "paper_value": _num(test.paper_cand),
                "paper_baseline": _num(test.paper_base),
                "paper_diff": _num(test.paper_diff),
                "sign_agrees": "" if agrees is None else str(agrees).lower(),
            }
            if test.result is None:
                row["note"] = "not measured"
            rows.append(row)
        for key in EPOCH_KEYS:
            for epoch, result in comp.epochs.get(key, []):
                rows.append(
                    {
                        "section": "epoch",
                        **common,
                        "quantity": key,
                        "epoch": str(epoch),
                        **_result_cells(result),
                    }
                )
    records = [record for s in summaries for record in s.records]
    rows += run_rows(summaries, ignored)
    rows += settings_csv_rows(records) if records else []
    return rows


# ---- assembly ----------------------------------------------------------------------------

LEGEND = (
    "Finished runs only (every planned epoch). Accuracy: best test accuracy of each run, "
    "mean ± sample std over seeds. Angles in degrees and IIR (intra/inter) at the final "
    "epoch, mean over seeds; class centers from training features (supplement A); "
    "inter-angle on training data."
)
HOW_TO_READ = (
    "How to read the claims: 'supported' = the paper's direction with Holm-adjusted "
    "p < 0.05. 'same direction, not significant' = the sign agrees but seed noise could "
    "explain it: the seeds-needed figure says whether more seeds would likely settle it "
    "(a few more) or the effect is small against the noise (many). 'opposite direction' = "
    "the sign disagrees, not significant; 'opposite direction, significant' = the data "
    "contradict the claim."
)


def report_header(summaries: list[VariantSummary]) -> str:
    """The report's first line: the experiment names (``--name``, the preset's name unless
    one was given) and what the numbers come from: dataset and training/test subsets."""

    def subsets(s: VariantSummary) -> str:
        config = s.records[0].config if s.records else None
        train = getattr(config, "train_subset", None)
        test = getattr(config, "test_subset", None)
        parts = [f"train subset {train}" if train else "", f"test subset {test}" if test else ""]
        return ", ".join(p for p in parts if p) or "full splits"

    sources = sorted({f"{s.dataset or 'unknown dataset'} ({subsets(s)})" for s in summaries})
    names = sorted({s.preset for s in summaries})
    return f"Experiment: {', '.join(names)}; data: {'; '.join(sources)}"


def _wrap_paths(line: str, indent: str) -> str:
    """Wrap at 100 columns without breaking a directory path at its hyphens or slashes."""
    return textwrap.fill(
        line, 100, subsequent_indent=indent, break_on_hyphens=False, break_long_words=False
    )


def left_out_lines(
    summaries: list[VariantSummary], ignored: Iterable[tuple[Path, str]] = ()
) -> list[str]:
    """The runs not in the table's means and the tests, each with why: diverged,
    unfinished, or a directory that could not be read."""
    lines = []
    for s in summaries:
        for seed in sorted(s.diverged):
            record = s.diverged[seed]
            lines.append(f"{s.label} seed {seed}: {status_text(record)} [{record.directory}]")
    for s in summaries:
        for seed in sorted(s.unfinished):
            record = s.unfinished[seed]
            lines.append(f"{s.label} seed {seed}: {status_text(record)} [{record.directory}]")
    lines += [f"{directory}: not read: {why}" for directory, why in ignored]
    return lines


def build_report(
    summaries: list[VariantSummary],
    comparisons: list[Comparison] | None = None,
    ignored: Iterable[tuple[Path, str]] = (),
) -> dict[str, str]:
    """The report as text, markdown and CSV strings (``comparisons``: computed if None;
    ``ignored``: run directories that could not be read, with why)."""
    ignored = list(ignored)
    rows = table_rows(summaries)
    if comparisons is None:
        comparisons = compare_to_baseline(summaries)
    wrap = textwrap.fill
    header = report_header(summaries)
    text = [header, format_text_table(rows)]
    markdown = [header, "", format_markdown_table(rows)]
    partial = partial_mean_lines(summaries)
    if partial:
        text += [wrap(f"  {line}", 100, subsequent_indent="      ") for line in partial]
        markdown += ["", *(f"- {line}" for line in partial)]
    text += ["", wrap(LEGEND, 100)]
    markdown += ["", LEGEND]
    left_out = left_out_lines(summaries, ignored)
    if left_out:
        title = "Runs left out of the table and the tests"
        text += ["", f"{title}:"]
        text += [_wrap_paths(f"  {line}", "      ") for line in left_out]
        markdown += ["", f"## {title}", "", *(f"- {line}" for line in left_out)]
    not_compared = uncompared(summaries, comparisons)
    if not_compared:
        text += ["", *(_wrap_paths(line, "  ") for line in not_compared)]
        markdown += ["", *(f"- {line}" for line in not_compared)]
    records = [record for s in summaries for record in s.records]
    settings = settings_lines(records)
    if settings:
        text += ["", settings[0], *(wrap(line, 100, subsequent_indent="      ") for line in
                                    settings[1:])]  # fmt: skip
        markdown += ["", f"## {settings[0].rstrip(':')}", ""]
        markdown += [f"- {line.strip()}" for line in settings[1:]]
    if comparisons:
        text += ["", "Tests (candidate - baseline, paired by seed):"]
        markdown += ["", "## Tests (candidate - baseline, paired by seed)"]
        for comp in comparisons:
            t_rows, notes = test_rows(comp)
            columns = test_columns(comp)
            text += ["", comparison_header(comp) + ":", format_text_table(t_rows, columns)]
            text += [f"  {n}" for n in notes]
            markdown += ["", f"**{comparison_header(comp)}**", ""]
            markdown += [format_markdown_table(t_rows, columns), ""]
            markdown += [f"- {n}" for n in notes]
        text += ["", wrap(WHY_TESTS, 100)]
        markdown += ["", WHY_TESTS]

        text += ["", "Claims of the paper, tested:"]
        markdown += ["", "## Claims of the paper, tested"]
        for comp in comparisons:
            header, *lines = claim_lines(comp)
            text.append(header)
            text += [wrap(line, 100, subsequent_indent="      ") for line in lines]
            markdown += ["", f"**{header}**", "", *(f"- {line.strip()}" for line in lines)]
        text += [wrap(HOW_TO_READ, 100)]
        markdown += ["", HOW_TO_READ]

        text.append("")
        markdown += ["", "## The paper beside us"]
        for comp in comparisons:
            heading, p_rows, columns = paper_block(comp)
            text.append(wrap(heading, 100))
            markdown += ["", heading]
            if p_rows:
                text.append(format_text_table(p_rows, columns))
                markdown += ["", format_markdown_table(p_rows, columns)]

        per_epoch = (
            "Holm over the epochs of each quantity; the figures mark the significant epochs "
            "with a star; all numbers in report.csv."
        )
        text += ["", wrap(f"Per-epoch paired t-tests ({per_epoch[:-1]}):", 100)]
        markdown += ["", "## Per-epoch paired t-tests", "", per_epoch]
        for comp in comparisons:
            lines = epoch_lines(comp)
            text.append(f"{comp.candidate} vs {comp.baseline} ({comp.shown_model}):")
            text += [f"  {line}" for line in lines] or ["  no per-epoch values"]
            markdown += ["", f"**{comp.candidate} vs {comp.baseline} ({comp.shown_model})**", ""]
            markdown += [f"- {line}" for line in lines] or ["- no per-epoch values"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(summaries, comparisons, ignored))
    return {
        "txt": "\n".join(text) + "\n",
        "md": "\n".join(markdown) + "\n",
        "csv": buffer.getvalue(),
    }


def significant_epochs(comparisons: list[Comparison]) -> dict[tuple[str, str, str, str], list]:
    """(preset, model, candidate label, key) -> epochs with Holm p < 0.05, for the plots."""
    marks = {}
    for comp in comparisons:
        for key in comp.epochs:
            marks[(comp.preset, comp.model, comp.candidate, key)] = comp.significant_epochs(key)
    return marks


# ---- the report folder --------------------------------------------------------------------

MANIFEST = "report.manifest.json"
_TMP_PREFIX = ".report-tmp-"
# names an earlier report (before the manifest) may have left: report.{txt,md,csv} and the
# figures <stem>_{accuracy_loss,angles,iir}.png
_LEGACY_NAMES = ("report.txt", "report.md", "report.csv")
_LEGACY_FIGURES = ("_accuracy_loss.png", "_angles.png", "_iir.png")


def _read_manifest(out_dir: Path) -> list[str] | None:
    """The file names the previous report wrote here (None: no manifest)."""
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # plain names only: a manifest never makes us delete outside the folder
    return [n for n in names if isinstance(n, str) and n and Path(n).name == n and n[0] != "."]


def _write_manifest(out_dir: Path, names: Iterable[str]) -> None:
    path = out_dir / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    payload = {"written_by": "l2bn report", "files": sorted(set(names))}
    tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _remove(out_dir: Path, names: Iterable[str]) -> None:
    for name in names:
        path = out_dir / name
        if path.is_file() and not path.is_symlink():
            path.unlink()


def clear_report(out_dir: str | Path) -> list[str]:
    """Remove the files the previous report wrote into ``out_dir`` (by its manifest), e.g.
    before the runs it describes change; returns their names. Other files stay."""
    out_dir = Path(out_dir)
    names = _read_manifest(out_dir)
    if not names:
        return []
    _remove(out_dir, names)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    return names


def refuse_report(out_dir: str | Path, error: Exception) -> Exception:
    """``error``, a refusal to report, once the previous report in ``out_dir`` is removed
    (:func:`clear_report`): left there, it would pass for a report of the runs as they are
    now. Its message then says so, and names report files of an older l2bn (no manifest)
    that stay. Returns the error, for the caller to raise."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return error
    said = []
    removed = clear_report(out_dir)
    if removed:
        said.append(
            f"the previous report in {out_dir} ({', '.join(sorted(removed))}) was removed, "
            "so that it is not taken for a report of these runs"
        )
    legacy = _legacy_files(out_dir, set())
    if legacy:
        said.append(
            f"{out_dir} still holds {', '.join(legacy)}, not written by this l2bn (an older "
            "report's files?): not a report of these runs"
        )
    if said:
        error.args = (f"{error}; {'; '.join(said)}",)
    return error


def _legacy_files(out_dir: Path, written: set[str]) -> list[str]:
    """Files named like report files in a folder without manifest, other than ``written``."""
    if (out_dir / MANIFEST).is_file():
        return []
    return sorted(
        p.name
        for p in out_dir.iterdir()
        if p.is_file()
        and p.name not in written
        and (p.name in _LEGACY_NAMES or p.name.endswith(_LEGACY_FIGURES))
    )


def _warn_about_legacy_files(out_dir: Path, written: set[str]) -> None:
    """A folder without manifest (written by an older l2bn) may hold report files this
    report does not rewrite: said, not deleted (nothing says the harness wrote them)."""
    stale = _legacy_files(out_dir, written)
    if stale:
        warnings.warn(
            f"{out_dir} holds {', '.join(stale)}, not written by this report (an older "
            "report's files?); delete them if they are",
            RuntimeWarning,
            stacklevel=3,
        )


def _publish(out_dir: Path, staging: Path) -> list[str]:
    """Move the files written into ``staging`` into ``out_dir`` and remove the previous
    report's files that were not written again. The manifest always covers every file of
    either report that may be in the folder, so an interrupted run leaves nothing that the
    next report would not clear."""
    previous = _read_manifest(out_dir)
    names = sorted(p.name for p in staging.iterdir() if p.is_file())
    if previous is None:
        _warn_about_legacy_files(out_dir, set(names))
    _write_manifest(out_dir, [*(previous or []), *names])
    for name in names:
        os.replace(staging / name, out_dir / name)
    _remove(out_dir, [n for n in previous or [] if n not in names and n != MANIFEST])
    _write_manifest(out_dir, names)
    return names


def _reportable(
    records: list[RunRecord], ignored: list[tuple[Path, str]], order: Iterable[Any] = ()
) -> list[VariantSummary]:
    """The runs summarized by variant; ValueError (or a UsageError) when they cannot be
    reported: none, runs that differ in more than the norm, one run in two directories, or
    no finished run. ``order``: as :func:`write_report`'s."""
    if not records:
        why = "; ".join(f"{directory}: {reason}" for directory, reason in ignored)
        raise ValueError("no runs with metrics to report" + (f" ({why})" if why else ""))
    require_comparable(
        [(record.config, record.seed) for record in records],
        "report each configuration on its own: give each one its own --name (or move its "
        "runs to another folder) and run `l2bn report` on each folder",
    )
    summaries = summarize(records, order)  # DuplicateRunError: one run in two directories
    if not any(s.runs or s.diverged for s in summaries):
        lines = "; ".join(left_out_lines(summaries, ignored))
        raise ValueError(
            f"no finished runs to report ({lines}): finish them (rerun the same `l2bn "
            "compare`, or `l2bn train --resume`), then report"
        )
    return summaries


def write_report(
    records: list[RunRecord],
    out_dir: str | Path,
    *,
    plots: bool = True,
    ignored: Iterable[tuple[Path, str]] = (),
    order: Iterable[Any] = (),
) -> dict[str, Any]:
    """Write report.txt/.md/.csv (and PNG plots) into ``out_dir``; returns paths and text.

    ``ignored``: run directories that could not be read, with why (named in the report).
    ``order``: the configs of the experiment's variants in its order, when known (the rows
    follow it, else the paper's order: :func:`~l2bn.experiments.summary.summarize`).
    The folder then holds this report's files (and files the report never wrote) only:
    see the module docstring. When the runs cannot be reported (ValueError, UsageError),
    the previous report is removed first (:func:`refuse_report`)."""
    ignored = list(ignored)
    try:
        summaries = _reportable(records, ignored, order)
    except ValueError as err:  # UsageError too
        raise refuse_report(out_dir, err) from None
    comparisons = compare_to_baseline(summaries)
    texts = build_report(summaries, comparisons, ignored)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(_TMP_PREFIX + "*"):  # left by an interrupted report
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=out_dir))
    try:
        for ext, content in texts.items():
            (staging / f"report.{ext}").write_text(content, encoding="utf-8")
        if plots:
            from l2bn.experiments.plots import plot_curves

            written = plot_curves(summaries, staging, marks=significant_epochs(comparisons))
        else:
            written = []
        _publish(out_dir, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = [out_dir / f"report.{ext}" for ext in texts]
    images = [out_dir / path.name for path in written]
    return {"text": texts["txt"], "files": files, "plots": images}
