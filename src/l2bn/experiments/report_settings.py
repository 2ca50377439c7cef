"""The settings block of the report: how the reported runs were trained and measured, read
from what each run recorded (``config.yaml``, and ``fingerprint.json``: the identity with
the l2bn and torch versions, and whatever else the run recorded, e.g. a git commit).

Each setting is shown once when every run in the report has the same value; where the
runs pooled in the report differ, the setting is listed with each value and the runs that
hold it (``threads: 1 (resnet20-bn) vs 2 (resnet20-l2bn)``). The norm, its options and its
placement are what a comparison varies, so they are listed per variant instead.
"""

from __future__ import annotations

import json
from typing import Any

from l2bn.experiments.config import field_names
from l2bn.experiments.runs import RunRecord, variant_name

# (line label, config fields); fields named here that a run does not use are left out
# (milestones/gamma outside ``multistep``, restart_epochs outside ``cosine_restarts``)
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "training",
        (
            "epochs",
            "batch_size",
            "eval_batch_size",
            "lr",
            "momentum",
            "nesterov",
            "weight_decay",
            "scheduler",
            "min_lr",
            "warmup_epochs",
            "milestones",
            "gamma",
            "restart_epochs",
        ),
    ),
    (
        "data",
        (
            "dataset",
            "dataset_kwargs",
            "train_subset",
            "test_subset",
            "augment",
            "mixup_alpha",
            "mixup_per_sample",
            "label_smoothing",
        ),
    ),
    ("metrics", ("metrics", "metrics_max_samples")),
    ("run on", ("device", "threads", "num_workers", "notes")),
)
NORM_FIELDS = ("norm", "norm_kwargs", "l2bn_layers")
NOT_RECORDED = "not recorded"


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _used(field: str, config: Any) -> bool:
    if field in ("milestones", "gamma"):
        return config.scheduler == "multistep"
    if field == "restart_epochs":
        return config.scheduler == "cosine_restarts"
    if field == "mixup_per_sample":
        return config.mixup_alpha > 0
    if field == "notes":
        return bool(config.notes)
    return True


def _recorded(record: RunRecord) -> dict[str, str]:
    """What ``fingerprint.json`` holds beyond the config: versions, commit, ... (identity
    entries that are no config field, or that differ from ``config.yaml``), and the file's
    other entries (one level of nesting flattened as ``key.sub``)."""
    if record.identity is None:
        return {}
    config = record.config.to_dict()
    fields = set(field_names())
    out: dict[str, str] = {}
    for key, value in record.identity.items():
        if key == "seed" or (key in fields and config.get(key) == value):
            continue
        out[key] = _text(value)
    for key, value in record.recorded.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": _text(v) for k, v in value.items()})
        else:
            out[key] = _text(value)
    return out


def _label(record: RunRecord, several_names: bool) -> str:
    variant = variant_name(record.config)
    return f"{record.config.name}/{variant}" if several_names else variant


def _holders(records: list[RunRecord], members: list[int], several_names: bool) -> str:
    """The runs ``members`` (indices) as variants, with seeds where only some of a
    variant's runs are among them: ``resnet20-bn, resnet20-l2bn seed 121``."""
    by_label: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_label.setdefault(_label(record, several_names), []).append(i)
    parts = []
    for label, indices in by_label.items():
        inside = [i for i in indices if i in members]
        if not inside:
            continue
        if len(inside) == len(indices):
            parts.append(label)
        else:
            seeds = ", ".join(str(records[i].seed) for i in inside)
            parts.append(f"{label} seed {seeds}")
    return ", ".join(parts)


def settings_table(records: list[RunRecord]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """``(group, setting, [(value, holders)])`` for every setting of ``records``, in the
    order of ``GROUPS`` then the recorded extras (group ``recorded``); ``holders`` is ""
    when every run has the value."""
    several_names = len({r.config.name for r in records}) > 1
    per_run: list[dict[str, tuple[str, str]]] = []
    for record in records:
        values: dict[str, tuple[str, str]] = {}
        config = record.config.to_dict()
        for group, fields in GROUPS:
            for name in fields:
                if _used(name, record.config):
                    values[name] = (group, _text(config[name]))
        identity = record.identity or {}
        for name in ("l2bn_version", "torch_version"):
            values[name] = ("recorded", _text(identity.get(name, NOT_RECORDED)))
        for name, value in _recorded(record).items():
            values.setdefault(name, ("recorded", value))
        per_run.append(values)
    order: dict[str, str] = {}
    for values in per_run:
        for name, (group, _) in values.items():
            order.setdefault(name, group)
    group_rank = {g: i for i, g in enumerate([*(g for g, _ in GROUPS), "recorded"])}
    names = sorted(order, key=lambda n: group_rank[order[n]])  # stable: field order kept
    table = []
    for name in names:
        by_value: dict[str, list[int]] = {}
        for i, values in enumerate(per_run):
            value = values[name][1] if name in values else NOT_RECORDED
            by_value.setdefault(value, []).append(i)
        if len(by_value) == 1:
            entries = [(next(iter(by_value)), "")]
        else:
            entries = [
                (value, _holders(records, members, several_names))
                for value, members in by_value.items()
            ]
        table.append((order[name], name, entries))
    return table


def norm_layers(records: list[RunRecord]) -> list[str]:
    """One entry per variant: ``resnet20-l2bn: norm l2bn, l2bn_layers all`` (with
    ``norm_kwargs`` when set)."""
    several_names = len({r.config.name for r in records}) > 1
    seen: dict[str, str] = {}
    for record in records:
        config = record.config
        text = f"norm {config.norm}"
        if config.norm_kwargs:
            text += f", norm_kwargs {_text(config.norm_kwargs)}"
        text += f", l2bn_layers {config.l2bn_layers}"
        seen.setdefault(_label(record, several_names), text)
    return [f"{label}: {text}" for label, text in seen.items()]


def metrics_samples(config: Any) -> str:
    """What the angle metrics of a run with ``config`` are computed from, in words
    (:func:`l2bn.experiments.evaluation.evaluate_epoch`: the training features of a fixed,
    class-balanced subset of ``min(train_subset, metrics_max_samples)`` images, the test
    features of the first ``metrics_max_samples`` images of the test subset, whose order
    keeps every prefix class-balanced)."""
    if not config.metrics:
        return "angle metrics off"
    cap = config.metrics_max_samples
    balanced = "a fixed, class-balanced subset"
    train = [v for v in (config.train_subset, cap) if v is not None]
    train_text = (
        (f"{min(train)} training images", balanced) if train else ("every training image", "")
    )
    if config.test_subset is not None:
        count = config.test_subset if cap is None else min(cap, config.test_subset)
        test_text = (f"{count} test images", balanced)
    elif cap is not None:
        test_text = (f"the first {cap} test images", "in the test set's order")
    else:
        test_text = ("every test image", "")
    if train_text[1] == test_text[1] == balanced:
        what = f"{train_text[0]} and {test_text[0]} (fixed, class-balanced subsets)"
    else:
        what = " and ".join(f"{t} ({note})" if note else t for t, note in (train_text, test_text))
    return f"angles and IIR from the classifier inputs of {what}"


def _metrics_note(records: list[RunRecord]) -> str:
    """What the angle metrics are computed from, when every run shares it."""
    notes = {metrics_samples(record.config) for record in records}
    return notes.pop() if len(notes) == 1 else ""


def settings_lines(records: list[RunRecord]) -> list[str]:
    """The settings block of ``report.txt``, one line per group, then the differences."""
    if not records:
        return []
    table = settings_table(records)
    lines = ["Settings (as recorded by the runs: config.yaml, fingerprint.json):"]
    differ = []
    for group in [*(g for g, _ in GROUPS), "recorded"]:
        items = []
        for g, name, entries in table:
            if g != group:
                continue
            if len(entries) == 1:
                items.append(f"{name} {entries[0][0]}")
            else:
                items.append(f"{name} differs (below)")
                values = " vs ".join(f"{v} ({holders})" for v, holders in entries)
                differ.append(f"{name}: {values}")
        note = _metrics_note(records) if group == "metrics" else ""
        label = "versions etc." if group == "recorded" else group
        lines.append(f"  {label}: {', '.join(items)}" + (f" ({note})" if note else ""))
        if group == "training":
            lines.append(f"  norm layers: {'; '.join(norm_layers(records))}")
    if differ:
        lines.append("  the runs in this report differ in:")
        lines += [f"    {line}" for line in differ]
    return lines


def settings_csv_rows(records: list[RunRecord]) -> list[dict[str, str]]:
    """``report.csv`` rows of section ``setting``: one per setting and value (``variant``
    names the runs holding the value when the runs differ)."""
    rows = []
    for _group, name, entries in settings_table(records):
        for value, holders in entries:
            rows.append(
                {"section": "setting", "quantity": name, "value": value, "variant": holders}
            )
    several_names = len({r.config.name for r in records}) > 1
    for record in records:
        label = _label(record, several_names)
        for name in NORM_FIELDS:
            rows.append(
                {
                    "section": "setting",
                    "quantity": name,
                    "value": _text(getattr(record.config, name)),
                    "variant": label,
                    "seeds": str(record.seed),
                }
            )
    return rows
