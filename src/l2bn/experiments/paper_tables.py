"""The paper's result tables (1-6) as data, and the rows that match a run.

``paper_tables.csv`` (shipped in the package) has one line per table entry: the table
number, dataset and model (this project's names: ``cifar100`` / ``resnet56``), the paper's
own model and row labels, the norm and L2BN placement (this project's names), the epochs of
the recipe (supplement Table 1, section 4.2), the seeds (5 for CIFAR100, seed 1 for
ImageNet, not stated for the acoustic models), and what the table reports: accuracy
(``acc_mean`` and, for CIFAR100, ``acc_std`` over the seeds), intra-angle on training and
test data, inter-angle (degrees), IIR on training and test data. Empty cells: not reported.

Table 1: CIFAR100, twelve backbones, BN vs L2BN, all quantities. Table 2: ImageNet-1K,
accuracy. Table 3: ResNet-56 with other pre-BN normalizations (accuracy, IIR). Table 4:
ResNet-56 with L2BN in some layers (accuracy). Table 5: ResNet-56 with other
normalizations (accuracy, IIR). Table 6: acoustic scene classification (accuracy).
"""

from __future__ import annotations

import csv
import functools
import io
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

QUANTITIES = ("acc_mean", "intra_train", "intra_test", "inter", "iir_train", "iir_test")
TABLE_ROWS = {1: 24, 2: 8, 3: 5, 4: 5, 5: 9, 6: 6}


@dataclass(frozen=True)
class PaperRow:
    table: int
    dataset: str
    model: str
    paper_model: str
    norm: str
    placement: str
    paper_label: str
    epochs: int
    seeds: int | None
    values: dict[str, float]  # QUANTITIES plus acc_std; NaN where the table has no value

    def value(self, quantity: str) -> float:
        return self.values.get(quantity, math.nan)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.dataset, self.model, self.norm, self.placement)


def _number(text: str) -> float:
    return float(text) if text.strip() else math.nan


@functools.cache
def load_paper_rows() -> tuple[PaperRow, ...]:
    """Every row of the paper's Tables 1-6, in table order."""
    text = (resources.files("l2bn.experiments") / "paper_tables.csv").read_text("utf-8")
    rows = []
    for line in csv.DictReader(io.StringIO(text)):
        values = {k: _number(line[k]) for k in (*QUANTITIES, "acc_std")}
        rows.append(
            PaperRow(
                table=int(line["table"]),
                dataset=line["dataset"],
                model=line["model"],
                paper_model=line["paper_model"],
                norm=line["norm"],
                placement=line["placement"],
                paper_label=line["paper_label"],
                epochs=int(line["epochs"]),
                seeds=int(line["seeds"]) if line["seeds"].strip() else None,
                values=values,
            )
        )
    return tuple(rows)


def norm_key(norm: str, norm_kwargs: dict[str, Any] | None = None) -> str:
    """The paper-table name of a norm: ``gn`` with ``channels_per_group=4`` is ``gn-cpg4``
    (:func:`l2bn.norms.canonical_norm`; other options are not part of the name)."""
    from l2bn.norms import canonical_norm

    return canonical_norm(norm, norm_kwargs)[0]


def _key(dataset: str, model: str, norm: str, placement: str) -> tuple[str, str, str, str]:
    if placement == "none":  # Table 4's baseline is the BN model
        norm, placement = "bn", "all"
    return (dataset, model, norm, placement)


@functools.cache
def variant_order() -> tuple[tuple[str, str], ...]:
    """Every (norm, placement) of the paper's tables in one order that keeps the order of
    each table's rows: BN first, L2BN last, the other variants in between as the tables
    list them (Table 3's, Table 4's placements, Table 5's)."""
    before: dict[tuple[str, str], set[tuple[str, str]]] = {}
    previous: dict[tuple[int, str, str], tuple[str, str]] = {}
    for row in load_paper_rows():
        variant = (row.norm, row.placement)
        needs = before.setdefault(variant, set())
        table = (row.table, row.dataset, row.model)
        if table in previous:
            needs.add(previous[table])
        previous[table] = variant
    order: list[tuple[str, str]] = []
    while len(order) < len(before):
        # the first variant (in the tables' order) whose predecessors are all placed
        order.append(
            next(v for v, needs in before.items() if v not in order and needs <= set(order))
        )
    return tuple(order)


def variant_rank(norm: str, placement: str) -> int:
    """Where a variant comes in :func:`variant_order` (placement ``none`` is BN; a variant
    the paper has no row for comes after every one it has)."""
    _, _, norm, placement = _key("", "", norm, placement)
    order = variant_order()
    return order.index((norm, placement)) if (norm, placement) in order else len(order)


def find_row(
    dataset: str, model: str, norm: str, placement: str = "all", table: int | None = None
) -> PaperRow | None:
    """The paper's row for this variant: in ``table``, or the first table that has it."""
    key = _key(dataset, model, norm, placement)
    for row in load_paper_rows():
        if row.key == key and (table is None or row.table == table):
            return row
    return None


def find_pair(
    dataset: str,
    model: str,
    baseline: tuple[str, str],
    candidate: tuple[str, str],
) -> tuple[PaperRow, PaperRow] | None:
    """The paper's (baseline, candidate) rows from the first table that has both.

    ``baseline`` and ``candidate`` are ``(norm, placement)``. Table 1 comes first, so BN vs
    L2BN on ResNet-56 uses Table 1 (with angles), LNBN uses Table 3, a placement Table 4,
    GN-cpg4 Table 5.
    """
    for table in sorted(TABLE_ROWS):
        cand = find_row(dataset, model, *candidate, table=table)
        base = find_row(dataset, model, *baseline, table=table)
        if cand is not None and base is not None:
            return base, cand
    return None


def datasets() -> list[str]:
    """The datasets the paper's tables cover, in table order."""
    seen: list[str] = []
    for row in load_paper_rows():
        if row.dataset not in seen:
            seen.append(row.dataset)
    return seen
