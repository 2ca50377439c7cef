"""Run identity: what determines a run's result, and the fingerprint that binds a directory
to it.

A run's identity is every config field that changes its numbers (model, norm and placement,
dataset and its options, subsets, every optimization and schedule field, epochs,
augmentation, mixup, label smoothing, the metrics settings), its seed, and the versions of
l2bn and torch. Fields that change only how a run executes (``EXECUTION_ONLY``: where the
data is, device, threads, loader workers, notes, the experiment name) are not part of it.

``fingerprint.json`` in a run directory stores the identity and its SHA-256 fingerprint; the
checkpoints carry the fingerprint too. A run is reused or resumed only when the fingerprints
match; otherwise :class:`RunMismatchError` names the fields that differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2bn.experiments.config import ExperimentConfig
from l2bn.experiments.errors import RunExistsError, UsageError
from l2bn.experiments.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DONE_FILE,
    METRICS_FILE,
    PREVIOUS_CHECKPOINT_FILE,
)

IDENTITY_FILE = "fingerprint.json"
EXECUTION_ONLY = ("name", "seeds", "data_root", "device", "threads", "num_workers", "notes")
# The fields the report compares: runs under one name and model may differ in these (and in
# their seed) only.
VARIANT_FIELDS = ("norm", "norm_kwargs", "l2bn_layers")
# Files a run writes; a directory holding any of them holds a run.
RUN_FILES = (IDENTITY_FILE, CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE)
# Cleared by --overwrite (with the tmp files, set-aside checkpoints and TensorBoard logs).
_CLEARED_GLOBS = ("fingerprint.json*", "config.yaml*", "metrics.jsonl*", "checkpoint*", "done*")


class RunMismatchError(RunExistsError):
    """The run directory holds a run of another identity (or one without a fingerprint)."""


class IncomparableRunsError(UsageError):
    """Runs to be reported together differ in more than the norm, placement and seed."""


def run_identity(config: ExperimentConfig, seed: int) -> dict[str, Any]:
    """The fields that determine the result of seed ``seed`` of ``config``."""
    import torch

    import l2bn

    fields = {k: v for k, v in config.to_dict().items() if k not in EXECUTION_ONLY}
    return {
        "seed": int(seed),
        **fields,
        "l2bn_version": l2bn.__version__,
        "torch_version": str(torch.__version__),
    }


def comparison_settings(config: ExperimentConfig) -> dict[str, Any]:
    """What runs compared with each other must share: the identity's config fields less the
    compared ones (``VARIANT_FIELDS``) and the seed. Runs of one name and model whose
    settings differ are not comparable (:func:`incomparable_settings`)."""
    skip = (*EXECUTION_ONLY, *VARIANT_FIELDS)
    return {k: v for k, v in config.to_dict().items() if k not in skip}


def _variant_tag(config: ExperimentConfig) -> str:
    tag = config.norm
    if config.norm_kwargs:
        tag += "(" + ",".join(f"{k}={v}" for k, v in sorted(config.norm_kwargs.items())) + ")"
    if config.l2bn_layers != "all":
        tag += f"-{config.l2bn_layers}"
    return tag


def _holders(runs: list[tuple[ExperimentConfig, int]], members: list[int]) -> str:
    """The variants (``bn``, ``l2bn-stage1``) of ``members``, with their seeds when only
    some of a variant's runs are among them."""
    by_tag: dict[str, list[int]] = {}
    for i, (config, _) in enumerate(runs):
        by_tag.setdefault(_variant_tag(config), []).append(i)
    parts = []
    for tag, indices in by_tag.items():
        inside = [i for i in indices if i in members]
        if not inside:
            continue
        if len(inside) == len(indices):
            parts.append(tag)
        else:
            seeds = ", ".join(str(runs[i][1]) for i in inside)
            parts.append(f"{tag} seed {seeds}")
    return ", ".join(parts)


def incomparable_settings(runs: list[tuple[ExperimentConfig, int]]) -> list[str]:
    """For runs ``(config, seed)`` reported together: ``"[name/model] key: A (bn) vs B
    (l2bn)"`` for every setting other than the norm, placement and seed that differs between
    runs of one name and model (empty: every comparison is like for like)."""
    groups: dict[tuple[str, str], list[tuple[ExperimentConfig, int]]] = {}
    for config, seed in runs:
        groups.setdefault((config.name, config.model), []).append((config, seed))
    lines = []
    for (name, model), members in groups.items():
        settings = [comparison_settings(config) for config, _ in members]
        keys = list(dict.fromkeys(k for s in settings for k in s))
        for key in keys:
            values: dict[str, list[int]] = {}
            for i, s in enumerate(settings):
                values.setdefault(json.dumps(s.get(key), sort_keys=True), []).append(i)
            if len(values) < 2:
                continue
            text = " vs ".join(
                f"{settings[holders[0]].get(key)!r} ({_holders(members, holders)})"
                for holders in values.values()
            )
            lines.append(f"[{name}/{model}] {key}: {text}")
    return lines


def require_comparable(runs: list[tuple[ExperimentConfig, int]], advice: str) -> None:
    """IncomparableRunsError naming every differing setting, unless there is none."""
    lines = incomparable_settings(runs)
    if lines:
        raise IncomparableRunsError(
            "these runs differ in more than the norm and the seed, so their comparison "
            f"would not be like for like ({'; '.join(lines)}); {advice}"
        )


def fingerprint(identity: dict[str, Any]) -> str:
    """SHA-256 of the identity's canonical JSON."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every field that differs."""
    keys = [*saved, *(k for k in current if k not in saved)]
    return [
        f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
        for key in keys
        if saved.get(key) != current.get(key)
    ]


@dataclass
class RunState:
    """What a run directory holds, seen against the identity of the run to do there."""

    holds_run: bool
    same: bool
    done: bool
    differing: list[str] = field(default_factory=list)


def _read_identity(directory: Path) -> dict[str, Any] | None:
    path = directory / IDENTITY_FILE
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        identity = stored["identity"]
        if fingerprint(identity) != stored["fingerprint"]:
            return None
        return identity
    except (OSError, ValueError, KeyError, TypeError):
        return None


def inspect_run(directory: str | Path, identity: dict[str, Any]) -> RunState:
    """Whether ``directory`` is empty, holds this run (done or not), or another one."""
    directory = Path(directory)
    done = (directory / DONE_FILE).is_file()
    holds = done or any((directory / name).exists() for name in RUN_FILES)
    if not holds:
        return RunState(holds_run=False, same=False, done=False)
    stored = _read_identity(directory)
    if stored is None:
        reason = (
            f"no valid {IDENTITY_FILE} (written by an older l2bn, or damaged), "
            "so its configuration is unknown"
        )
        return RunState(True, False, done, [reason])
    return RunState(True, stored == identity, done, differences(stored, identity))


def mismatch_error(directory: str | Path, state: RunState) -> RunMismatchError:
    """The one-line refusal: what differs, and the two ways forward."""
    return RunMismatchError(
        f"{directory} holds a run with a different configuration "
        f"({'; '.join(state.differing)}); keep it and choose another run directory "
        "(--name or --runs-dir), or pass --overwrite to delete it and train afresh"
    )


def require_same_run(directory: str | Path, identity: dict[str, Any]) -> RunState:
    """The state of ``directory``; RunMismatchError if it holds another run."""
    state = inspect_run(directory, identity)
    if state.holds_run and not state.same:
        raise mismatch_error(directory, state)
    return state


def write_identity(directory: str | Path, identity: dict[str, Any]) -> None:
    """Bind ``directory`` to ``identity`` (atomically)."""
    path = Path(directory) / IDENTITY_FILE
    payload = {"fingerprint": fingerprint(identity), "identity": identity}
    tmp = path.with_name(IDENTITY_FILE + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def clear_run(directory: str | Path) -> None:
    """Delete the files of the run in ``directory`` (``--overwrite``); the lock stays."""
    directory = Path(directory)
    for pattern in _CLEARED_GLOBS:
        for path in directory.glob(pattern):
            path.unlink()
    shutil.rmtree(directory / "tensorboard", ignore_errors=True)
