"""The comparison report in the layout of the paper's Table 1, from saved runs.

Per model and norm: accuracy as mean +- std over seeds of each run's best test accuracy (as
in section 4.1), then intra-angle on train and test data, inter-angle, and IIR on train and
test data (supplement eqs. 2-3, paper eq. 4) at the final epoch, averaged over seeds. Below
the table: the paired t-test of every norm against the baseline (BN) over seeds.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2bn.experiments.runs import RunRecord
from l2bn.experiments.stats_tests import WHY_PAIRED_T, PairedResult, paired_t_test

NORM_LABELS = {
    "bn": "BN",
    "l2bn": "L2BN",
    "lnbn": "LNBN",
    "inbn": "INBN",
    "pnbn": "PNBN",
    "ln": "LN",
    "in": "IN",
    "gn": "GN",
    "gn-cpg4": "GN-cpg4",
    "gn-cpg8": "GN-cpg8",
    "sn": "SN",
    "bcn": "BCN",
    "bin": "BIN",
}
ANGLE_KEYS = ("intra_train", "intra_test", "inter", "iir_train", "iir_test")
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


def norm_label(norm: str, placement: str, norm_kwargs: dict[str, Any] | None = None) -> str:
    label = NORM_LABELS.get(norm, norm)
    if norm == "gn" and norm_kwargs and "channels_per_group" in norm_kwargs:
        label = f"GN-cpg{norm_kwargs['channels_per_group']}"
    if placement != "all":
        label += f" [{placement}]"
    return label


@dataclass
class VariantSummary:
    """All seeds of one (preset, model, norm, placement)."""

    preset: str
    model: str
    norm: str
    placement: str
    label: str
    runs: dict[int, RunRecord] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return sorted(self.runs)

    @property
    def is_baseline(self) -> bool:
        return (self.norm == "bn" and self.placement == "all") or self.placement == "none"

    def best_acc(self, seed: int) -> float:
        return max(float(row["test_acc"]) for row in self.runs[seed].rows)

    def final(self, seed: int, key: str) -> float:
        value = self.runs[seed].rows[-1].get(key)
        return math.nan if value is None else float(value)

    def epochs_done(self) -> str:
        counts = sorted({len(run.rows) for run in self.runs.values()})
        planned = max(run.config.epochs for run in self.runs.values())
        text = "/".join(str(c) for c in counts)
        return text if counts == [planned] else f"{text} of {planned}"

    def acc_mean_std(self) -> tuple[float, float]:
        values = [self.best_acc(s) for s in self.seeds]
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        return statistics.fmean(values), std

    def final_mean(self, key: str) -> float:
        values = [self.final(s, key) for s in self.seeds]
        values = [v for v in values if not math.isnan(v)]
        return statistics.fmean(values) if values else math.nan


def summarize(records: Iterable[RunRecord]) -> list[VariantSummary]:
    """Group runs by preset, model, norm and placement (in first-seen order)."""
    groups: dict[tuple[str, ...], VariantSummary] = {}
    for record in records:
        config = record.config
        norm_key = config.norm
        if config.norm_kwargs:
            norm_key += "(" + ",".join(f"{k}={v}" for k, v in sorted(config.norm_kwargs.items()))
            norm_key += ")"
        key = (config.name, config.model, norm_key, config.l2bn_layers)
        if key not in groups:
            label = norm_label(config.norm, config.l2bn_layers, config.norm_kwargs)
            groups[key] = VariantSummary(
                config.name, config.model, config.norm, config.l2bn_layers, label
            )
        groups[key].runs[record.seed] = record
    return list(groups.values())


def _fmt(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def table_rows(summaries: list[VariantSummary]) -> list[list[str]]:
    rows = []
    for s in summaries:
        mean, std = s.acc_mean_std()
        acc = f"{mean:.2f} ± {std:.2f}" if not math.isnan(std) else f"{mean:.2f}"
        rows.append(
            [
                s.model,
                s.label,
                str(len(s.seeds)),
                s.epochs_done(),
                acc,
                _fmt(s.final_mean("intra_train"), 2),
                _fmt(s.final_mean("intra_test"), 2),
                _fmt(s.final_mean("inter"), 2),
                _fmt(s.final_mean("iir_train"), 3),
                _fmt(s.final_mean("iir_test"), 3),
            ]
        )
    return rows


def format_text_table(rows: list[list[str]], columns: tuple[str, ...] = COLUMNS) -> str:
    widths = [max(len(str(c)), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def format_markdown_table(rows: list[list[str]], columns: tuple[str, ...] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


@dataclass
class Comparison:
    """One norm against the baseline of its model, paired by seed."""

    preset: str
    model: str
    baseline: str
    candidate: str
    seeds: list[int]
    tests: list[PairedResult]


def compare_to_baseline(summaries: list[VariantSummary]) -> list[Comparison]:
    """Paired t-tests of best accuracy and final IIR (train, test) against the baseline."""
    comparisons = []
    by_model: dict[tuple[str, str], list[VariantSummary]] = {}
    for s in summaries:
        by_model.setdefault((s.preset, s.model), []).append(s)
    for (preset, model), variants in by_model.items():
        baselines = [v for v in variants if v.is_baseline]
        if not baselines:
            continue
        base = baselines[0]
        for other in variants:
            if other is base:
                continue
            seeds = sorted(set(base.seeds) & set(other.seeds))
            if not seeds:
                continue
            tests = [
                paired_t_test(
                    [base.best_acc(s) for s in seeds],
                    [other.best_acc(s) for s in seeds],
                    "best accuracy (pp)",
                )
            ]
            for key, name in (("iir_train", "final IIR train"), ("iir_test", "final IIR test")):
                b = [base.final(s, key) for s in seeds]
                c = [other.final(s, key) for s in seeds]
                if not any(math.isnan(v) for v in b + c):
                    tests.append(paired_t_test(b, c, name))
            comparisons.append(Comparison(preset, model, base.label, other.label, seeds, tests))
    return comparisons


def significance_lines(comparisons: list[Comparison]) -> list[str]:
    lines = []
    for comp in comparisons:
        lines.append(
            f"{comp.candidate} vs {comp.baseline} ({comp.model}, {len(comp.seeds)} seed(s) "
            f"paired: {', '.join(str(s) for s in comp.seeds)}):"
        )
        lines += [f"  {test.describe()}" for test in comp.tests]
    return lines


def build_report(summaries: list[VariantSummary]) -> dict[str, str]:
    """The report as text, markdown and CSV strings."""
    rows = table_rows(summaries)
    comparisons = compare_to_baseline(summaries)
    presets = sorted({s.preset for s in summaries})
    legend = (
        "Accuracy: best test accuracy of each run, mean ± sample std over seeds. Angles in "
        "degrees and IIR (intra/inter) at the final epoch, mean over seeds; class centers from "
        "training features (supplement A); inter-angle on training data."
    )
    significance = significance_lines(comparisons)
    wrap = textwrap.fill
    text = [f"Preset: {', '.join(presets)}", format_text_table(rows), "", wrap(legend, 100)]
    markdown = [f"Preset: {', '.join(presets)}", "", format_markdown_table(rows), "", legend]
    if significance:
        text += ["", "Significance (candidate - baseline):", *significance]
        text.append(wrap(WHY_PAIRED_T, 100))
        markdown += ["", "Significance (candidate - baseline):", "", "```", *significance, "```"]
        markdown += ["", WHY_PAIRED_T]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "preset",
            "model",
            "norm",
            "placement",
            "seeds",
            "acc_mean",
            "acc_std",
            *[f"{k}_mean" for k in ANGLE_KEYS],
        ]
    )
    for s in summaries:
        mean, std = s.acc_mean_std()
        writer.writerow(
            [
                s.preset,
                s.model,
                s.norm,
                s.placement,
                " ".join(str(x) for x in s.seeds),
                f"{mean:.4f}",
                "" if math.isnan(std) else f"{std:.4f}",
                *["" if math.isnan(v) else f"{v:.6f}" for v in map(s.final_mean, ANGLE_KEYS)],
            ]
        )
    return {
        "txt": "\n".join(text) + "\n",
        "md": "\n".join(markdown) + "\n",
        "csv": buffer.getvalue(),
    }


def write_report(
    records: list[RunRecord], out_dir: str | Path, *, plots: bool = True
) -> dict[str, Any]:
    """Write report.txt/.md/.csv (and PNG plots) into ``out_dir``; returns paths and text."""
    if not records:
        raise ValueError("no runs with metrics to report")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = summarize(records)
    texts = build_report(summaries)
    files = []
    for ext, content in texts.items():
        path = out_dir / f"report.{ext}"
        path.write_text(content, encoding="utf-8")
        files.append(path)
    images: list[Path] = []
    if plots:
        from l2bn.experiments.plots import plot_curves

        images = plot_curves(summaries, out_dir)
    return {"text": texts["txt"], "files": files, "plots": images}
