"""Saved runs grouped into variants: every seed of one (preset, model, norm, placement).

Shared by the report (tables and tests) and the plots, which import this module and never
each other's.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from l2bn.experiments.runs import RunRecord

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
    dataset: str = ""
    norm_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return sorted(self.runs)

    @property
    def is_baseline(self) -> bool:
        return (self.norm == "bn" and self.placement == "all") or self.placement == "none"

    @property
    def epochs_planned(self) -> int:
        return max(run.config.epochs for run in self.runs.values())

    def best_acc(self, seed: int) -> float:
        return max(float(row["test_acc"]) for row in self.runs[seed].rows)

    def final(self, seed: int, key: str) -> float:
        value = self.runs[seed].rows[-1].get(key)
        return math.nan if value is None else float(value)

    def value(self, seed: int, key: str) -> float:
        """``best_acc`` or the final epoch's ``key``."""
        return self.best_acc(seed) if key == "best_acc" else self.final(seed, key)

    def at_epoch(self, seed: int, key: str, epoch: int) -> float:
        """``key`` at 1-based ``epoch`` (NaN when the run has no such epoch or value)."""
        rows = self.runs[seed].rows
        if epoch > len(rows):
            return math.nan
        value = rows[epoch - 1].get(key)
        return math.nan if value is None else float(value)

    def epochs_done(self) -> str:
        counts = sorted({len(run.rows) for run in self.runs.values()})
        planned = self.epochs_planned
        text = "/".join(str(c) for c in counts)
        return text if counts == [planned] else f"{text} of {planned}"

    def acc_mean_std(self) -> tuple[float, float]:
        return self.mean_std("best_acc")

    def mean_std(self, key: str) -> tuple[float, float]:
        """Mean and sample std over seeds of ``best_acc`` or a final value (NaN skipped)."""
        values = [self.value(s, key) for s in self.seeds]
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return math.nan, math.nan
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        return statistics.fmean(values), std

    def final_mean(self, key: str) -> float:
        return self.mean_std(key)[0]


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
                config.name,
                config.model,
                config.norm,
                config.l2bn_layers,
                label,
                dataset=config.dataset,
                norm_kwargs=dict(config.norm_kwargs),
            )
        groups[key].runs[record.seed] = record
    return list(groups.values())
