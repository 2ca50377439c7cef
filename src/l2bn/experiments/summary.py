"""Saved runs grouped into variants: every seed of one (preset, model, norm, placement).

Only finished runs enter the statistics: a variant's ``runs`` are its runs that finished
every planned epoch, ``diverged`` those that stopped as diverged (a non-finite loss, weight
or feature: :mod:`l2bn.experiments.train`), ``unfinished`` the others (killed, still
running). Every statistic compares like with like: finished runs of one configuration, at
their final epoch.

Shared by the report (tables and tests) and the plots, which import this module and never
each other's.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from l2bn.experiments.errors import UsageError
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


def variant_norm(
    norm: str, norm_kwargs: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """The norm and its options in the one spelling of the layer they build
    (:func:`l2bn.norms.canonical_norm`): ``gn`` with ``channels_per_group`` 4 and ``gn-cpg4``
    are one variant, ``gn-cpg4``."""
    from l2bn.norms import canonical_norm

    return canonical_norm(norm, norm_kwargs)


def norm_label(norm: str, placement: str, norm_kwargs: dict[str, Any] | None = None) -> str:
    """``L2BN``, ``GN-cpg4``, ``L2BN(eps=0.001) [stage1]``: every variant (norm, options,
    placement) its own label, which the tables, the tests and the figures' curves go by.
    Two spellings of one layer (``gn-cpg4``, and ``gn`` with ``channels_per_group`` 4) get
    one label; option values are written as Python literals (``mode='x'``), so that a
    string is not taken for a number."""
    norm, options = variant_norm(norm, norm_kwargs)
    label = NORM_LABELS.get(norm, norm)
    if norm == "gn" and "channels_per_group" in options:
        label = f"GN-cpg{options.pop('channels_per_group')!r}"
    if options:
        label += "(" + ",".join(f"{k}={v!r}" for k, v in sorted(options.items())) + ")"
    if placement != "all":
        label += f" [{placement}]"
    return label


def model_label(preset: str, model: str, presets: Iterable[str]) -> str:
    """``resnet20``, or ``demo/resnet20`` when the report holds runs of several experiment
    names (``presets``): their rows and tests would look alike otherwise."""
    return f"{preset}/{model}" if len(set(presets)) > 1 else model


FINISHED = "finished"
DIVERGED = "diverged"
UNFINISHED = "unfinished"


def run_status(record: RunRecord) -> str:
    """``finished`` (every planned epoch, ``done`` marker), ``diverged`` (stopped as
    diverged) or ``unfinished`` (killed, still running, or a ``done`` marker without the
    planned epochs' metrics)."""
    if record.diverged_epoch is not None and record.done:
        return DIVERGED
    if record.done and len(record.rows) >= record.config.epochs:
        return FINISHED
    return UNFINISHED


def status_text(record: RunRecord) -> str:
    """``unfinished (1 of 2 epochs)`` / ``diverged at epoch 1 (training loss not finite)``."""
    status = run_status(record)
    if status == DIVERGED:
        return f"diverged at epoch {record.diverged_epoch} ({record.diverged_reason})"
    if status == UNFINISHED:
        done = " (its done marker is there: metrics.jsonl lost epochs?)" if record.done else ""
        return f"unfinished ({len(record.rows)} of {record.config.epochs} epochs){done}"
    return f"finished ({len(record.rows)} epochs)"


class DuplicateRunError(UsageError):
    """Two run directories hold the same variant and seed: which to pair is ambiguous."""


@dataclass
class VariantSummary:
    """All seeds of one (preset, model, norm, placement): ``runs`` the finished ones (the
    statistics use these only), ``diverged`` and ``unfinished`` the others. ``norm`` and
    ``norm_kwargs`` are the variant's one spelling (:func:`variant_norm`)."""

    preset: str
    model: str
    norm: str
    placement: str
    label: str
    runs: dict[int, RunRecord] = field(default_factory=dict)
    dataset: str = ""
    norm_kwargs: dict[str, Any] = field(default_factory=dict)
    diverged: dict[int, RunRecord] = field(default_factory=dict)
    unfinished: dict[int, RunRecord] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        """The seeds of the finished runs (the ones summarized and tested)."""
        return sorted(self.runs)

    @property
    def records(self) -> list[RunRecord]:
        """Every run of the variant, finished or not, by seed."""
        every = {**self.unfinished, **self.diverged, **self.runs}
        return [every[seed] for seed in sorted(every)]

    def record(self, seed: int) -> RunRecord | None:
        """The run of ``seed`` whatever its status, or None."""
        return self.runs.get(seed) or self.diverged.get(seed) or self.unfinished.get(seed)

    @property
    def is_baseline(self) -> bool:
        return (self.norm == "bn" and self.placement == "all") or self.placement == "none"

    @property
    def epochs_planned(self) -> int:
        return max(run.config.epochs for run in self.records)

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
        """Epochs of the summarized (finished) runs: ``5``, or ``-`` when there is none."""
        counts = sorted({len(run.rows) for run in self.runs.values()})
        if not counts:
            return "-"
        planned = self.epochs_planned
        text = "/".join(str(c) for c in counts)
        return text if counts == [planned] else f"{text} of {planned}"

    def acc_mean_std(self) -> tuple[float, float]:
        return self.mean_std("best_acc")

    def measured_seeds(self, key: str, seeds: Iterable[int] | None = None) -> list[int]:
        """The seeds (``seeds``, default every finished one) that have a value of
        ``best_acc`` or the final ``key`` (not NaN): those :meth:`mean_std` averages."""
        chosen = self.seeds if seeds is None else seeds
        return [seed for seed in chosen if not math.isnan(self.value(seed, key))]

    def missing_reason(self, seed: int, key: str) -> str:
        """Why the finished run of ``seed`` has no value of ``key`` at its final epoch:
        ``angles undefined (...)`` when its features gave the angles none, else ``not
        recorded``."""
        undefined = self.runs[seed].rows[-1].get("angles_undefined")
        if key in ANGLE_KEYS and undefined:
            return f"angles undefined ({undefined})"
        return "not recorded"

    def mean_std(self, key: str, seeds: Iterable[int] | None = None) -> tuple[float, float]:
        """Mean and sample std over seeds (``seeds``, default every finished one) of
        ``best_acc`` or a final value (NaN skipped: :meth:`measured_seeds` says over which
        seeds)."""
        values = [self.value(s, key) for s in self.measured_seeds(key, seeds)]
        if not values:
            return math.nan, math.nan
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        return statistics.fmean(values), std

    def final_mean(self, key: str) -> float:
        return self.mean_std(key)[0]


def variant_key(config: Any) -> tuple[str, ...]:
    """(name, model, norm, its options, placement): what one table row summarizes, with the
    norm and options in their one spelling (:func:`variant_norm`), so that two spellings of
    one layer are one variant."""
    norm, options = variant_norm(config.norm, config.norm_kwargs)
    options_key = json.dumps(options, sort_keys=True, default=repr)
    return (config.name, config.model, norm, options_key, config.l2bn_layers)


def duplicate_runs(records: Iterable[RunRecord]) -> list[str]:
    """``"resnet20-l2bn seed 121 (A, B)"`` for every variant and seed held by two or more
    run directories (empty when each is held once)."""
    holders: dict[tuple[Any, ...], list[RunRecord]] = {}
    for record in records:
        holders.setdefault((*variant_key(record.config), record.seed), []).append(record)
    return [
        f"{group[0].describe()} ({', '.join(str(r.directory) for r in group)})"
        for group in holders.values()
        if len(group) > 1
    ]


def summarize(records: Iterable[RunRecord], order: Iterable[Any] = ()) -> list[VariantSummary]:
    """Group runs by preset, model, norm and placement (in :func:`variant_sort_key`'s
    order); each run goes to its variant's ``runs``, ``diverged`` or ``unfinished``
    (:func:`run_status`). ``order``: the configs of the experiment's variants in the order
    it lists them (``l2bn compare --norms``), when known.

    Raises DuplicateRunError when two directories hold the same variant and seed."""
    records = list(records)
    duplicates = duplicate_runs(records)
    if duplicates:
        raise DuplicateRunError(
            f"two run directories hold the same run ({'; '.join(duplicates)}), so which one "
            "to pair is ambiguous: move one of them out of the folder"
        )
    groups: dict[tuple[str, ...], VariantSummary] = {}
    for record in records:
        config = record.config
        key = variant_key(config)
        if key not in groups:
            norm, options = variant_norm(config.norm, config.norm_kwargs)
            groups[key] = VariantSummary(
                config.name,
                config.model,
                norm,
                config.l2bn_layers,
                norm_label(norm, config.l2bn_layers, options),
                dataset=config.dataset,
                norm_kwargs=options,
            )
        status = run_status(record)
        group = groups[key]
        target = {FINISHED: group.runs, DIVERGED: group.diverged}.get(status, group.unfinished)
        target[record.seed] = record
    listed = [variant_key(config) for config in order]
    return [
        groups[key]
        for key in sorted(groups, key=lambda key: variant_sort_key(key, groups[key], listed))
    ]


def variant_sort_key(
    key: tuple[str, ...], summary: VariantSummary, listed: list[tuple[str, ...]]
) -> tuple[Any, ...]:
    """Where a variant's rows, tests and curves come, whatever the order the runs were found
    in: by experiment name and model, then in the order the experiment lists its variants
    (``listed``, their :func:`variant_key`), then in the paper's order (BN first, L2BN last:
    :func:`l2bn.experiments.paper_tables.variant_rank`), then by label."""
    from l2bn.experiments import paper_tables

    position = listed.index(key) if key in listed else len(listed)
    rank = paper_tables.variant_rank(summary.norm, summary.placement)
    return (summary.preset, summary.model, position, rank, summary.label)
