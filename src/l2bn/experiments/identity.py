"""Run identity: what determines a run's result, and the fingerprint that binds a directory
to it.

A run's identity is everything that changes its numbers:

* every config field except those that only say how it runs (``EXECUTION_ONLY``: the
  experiment name, where the data is, the device and thread settings as written, loader
  workers, notes): model, norm and placement, dataset and its options, subsets, every
  optimization and schedule field, epochs, augmentation, mixup, label smoothing, the
  metrics settings; and the seed;
* the code: the l2bn version and, when the package runs from a git work tree, the git tree
  of its source directory (``git:<tree>``, so that a commit touching only documentation or
  tests keeps runs valid) with a hash of its uncommitted changes (``+dirty:<hash>``); the
  torch version;
* where it computes: the device type the ``device`` setting resolves to (``cpu``,
  ``cuda``), the L2BN backend that runs a float32 call there (:mod:`l2bn.backends`:
  ``cpu`` for the fused C++ kernels, ``pytorch`` when they are unavailable, switched off or
  ``L2BN_DISABLE_FUSED=1``, ``triton`` on a GPU), and on a CPU the instruction sets of the
  fused kernels and of ATen and the number of torch threads (a reduction split over another
  number of threads sums in another order, and training amplifies the last-bit difference);
* the norm batch (:func:`l2bn.experiments.distributed.norm_batch`), the samples each batch
  norm layer computes its statistics over, as ``norm_batch`` when it is not the whole batch:
  under torchrun without ``--sync-bn``, each process's share. One process and torchrun with
  ``--sync-bn`` normalize over the same batch and share the identity (and the identities
  of runs from before the norm batch was part of it).

A ``fingerprint.json`` written before the norm batch was part of the identity names none,
also for a torchrun run without ``--sync-bn``: a finished run's norm batch is then the one
its ``done`` marker or last checkpoint recorded (:func:`run_norm_batch`), and it is reused
only by a run with that norm batch (an unfinished one of another norm batch than the whole
batch cannot be continued: its checkpoints carry the older fingerprint).

The thread count of a CPU run is decided once, when the run starts (:func:`settle_threads`):
the ``threads`` setting when given, else the caller's default (``l2bn compare``: the cores
divided by its parallel runs). A run that is resumed or reused without a ``threads``
setting keeps the count it started with; an explicit other count is a mismatch.

``fingerprint.json`` in a run directory stores the identity and its SHA-256 fingerprint; the
checkpoints carry the fingerprint too. A run is reused or resumed only when the identities
match (the fingerprints, but for the norm batch above); otherwise :class:`RunMismatchError`
names the fields that differ.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2bn.experiments.config import ExperimentConfig
from l2bn.experiments.errors import RunExistsError, UsageError
from l2bn.experiments.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DONE_FILE,
    IDENTITY_FILE,
    METRICS_FILE,
    PREVIOUS_CHECKPOINT_FILE,
    fingerprint,  # defined once, in runs (which reads fingerprint.json without this module)
    norm_variant,
)

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


def run_identity(
    config: ExperimentConfig, seed: int, *, world_size: int = 1, sync_bn: bool = False
) -> dict[str, Any]:
    """The fields that determine the result of seed ``seed`` of ``config``, trained by
    ``world_size`` processes (torchrun), with ``--sync-bn`` or not.

    On a CPU, ``config.threads`` None stands for the torch threads of this process (what a
    run leaves unset uses); :func:`settle_threads` sets it before a run starts."""
    import torch

    import l2bn
    from l2bn.experiments.distributed import norm_batch, resolve_device

    fields = {k: v for k, v in config.to_dict().items() if k not in EXECUTION_ONLY}
    device_type = resolve_device(config.device).type
    identity = {
        "seed": int(seed),
        **fields,
        "l2bn_version": l2bn.__version__,
        "l2bn_source": source_version(),
        "torch_version": str(torch.__version__),
        "device_type": device_type,
        **compute_backend(device_type),
    }
    if device_type == "cpu":
        threads = config.threads if config.threads is not None else torch.get_num_threads()
        identity["threads"] = int(threads)
    samples = norm_batch(config.batch_size, world_size, sync_bn, config.norm, config.norm_kwargs)
    if samples != config.batch_size:
        identity["norm_batch"] = samples
    return identity


def identity_norm_batch(identity: dict[str, Any]) -> int | None:
    """The norm batch of a run of ``identity`` (None when the identity has no batch size)."""
    return identity.get("norm_batch", identity.get("batch_size"))


def compute_backend(device_type: str) -> dict[str, Any]:
    """What computes on ``device_type``: the L2BN backend of a float32 training call and of
    an eval call (one name when they agree), and on a CPU the fused kernels' instruction
    set (None when they do not run) and ATen's CPU capability."""
    import torch

    from l2bn._impl import dispatch

    x = torch.empty((2, 1, 2), device=device_type)
    stats = torch.empty((1,), device=device_type)
    training = dispatch.choose(x, stats, stats, None, None, True, True).NAME
    evaluation = dispatch.choose(x, stats, stats, None, None, False, False).NAME
    backend = training if training == evaluation else f"training {training}, eval {evaluation}"
    result: dict[str, Any] = {"l2bn_backend": backend}
    if device_type == "cpu":
        fused = "cpu" in (training, evaluation) and hasattr(torch.ops.l2bn, "cpu_isa")
        result["l2bn_cpu_isa"] = str(torch.ops.l2bn.cpu_isa()) if fused else None
        result["aten_cpu_capability"] = torch.backends.cpu.get_cpu_capability().lower()
    return result


@functools.lru_cache(maxsize=1)
def source_version() -> str | None:
    """:func:`git_source` of the l2bn package's directory (None for an installed copy,
    whose version alone names the code). Computed once per process."""
    import l2bn

    return git_source(Path(l2bn.__file__).resolve().parent)


def git_source(directory: Path) -> str | None:
    """``git:<tree>``: the git tree of ``directory`` at HEAD, with ``+dirty:<hash>`` (a hash
    of its uncommitted changes, untracked files included) when it has any; None when it is
    not tracked in a git work tree (or git is missing)."""

    def git(*args: str) -> bytes:
        env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
        return subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True,
            check=True,
            timeout=30,
            env=env,
        ).stdout

    try:
        tree = git("rev-parse", "--verify", "--quiet", "HEAD:./").decode().strip()
        if not tree:
            return None
        status = git("status", "--porcelain=v1", "-z", "--untracked-files=all", "--", ".")
        if not status:
            return f"git:{tree[:16]}"
        top = Path(git("rev-parse", "--show-toplevel").decode().strip())
        digest = hashlib.sha256(git("diff", "--binary", "HEAD", "--", "."))
        for entry in status.split(b"\0"):
            if entry.startswith(b"?? "):
                name = entry[3:]
                digest.update(b"\0" + name + b"\0")
                digest.update((top / os.fsdecode(name)).read_bytes())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return f"git:{tree[:16]}+dirty:{digest.hexdigest()[:16]}"


def settle_threads(
    config: ExperimentConfig,
    directory: str | Path,
    default: int,
    adopt: bool = True,
) -> ExperimentConfig:
    """``config`` with the thread count its CPU run uses, decided once per run.

    A set ``threads`` is kept (when it differs from the count the directory's run started
    with, the identities differ: a mismatch). Unset, it becomes the count that the
    directory's run recorded (with ``adopt``: not when the run is to be trained afresh),
    else ``default``. The recorded count is taken whether or not the rest of the run's
    identity matches: a run that matches is then reused or resumed with its own count, and
    one that does not is refused naming only what differs (a source change, say), not also
    a count nobody asked to change. Off the CPU the thread count is not part of the result,
    and ``config`` is returned as it is."""
    from l2bn.experiments.distributed import resolve_device

    if config.threads is not None or resolve_device(config.device).type != "cpu":
        return config
    if adopt:
        stored = _read_identity(Path(directory))
        recorded = stored.get("threads") if stored is not None else None
        if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 1:
            return config.replace(threads=recorded)
    return config.replace(threads=max(1, int(default)))


def comparison_settings(config: ExperimentConfig) -> dict[str, Any]:
    """What runs compared with each other must share: the identity's config fields less the
    compared ones (``VARIANT_FIELDS``) and the seed. Runs of one name and model whose
    settings differ are not comparable (:func:`incomparable_settings`)."""
    skip = (*EXECUTION_ONLY, *VARIANT_FIELDS)
    return {k: v for k, v in config.to_dict().items() if k not in skip}


def _holders(runs: list[tuple[ExperimentConfig, int]], members: list[int]) -> str:
    """The variants (``bn``, ``l2bn-stage1``) of ``members``, with their seeds when only
    some of a variant's runs are among them."""
    by_tag: dict[str, list[int]] = {}
    for i, (config, _) in enumerate(runs):
        by_tag.setdefault(norm_variant(config), []).append(i)
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


def differing_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fields that differ, in the saved identity's order."""
    keys = [*saved, *(k for k in current if k not in saved)]
    return [key for key in keys if saved.get(key) != current.get(key)]


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every field that differs."""
    return [
        f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
        for key in differing_keys(saved, current)
    ]


@dataclass
class RunState:
    """What a run directory holds, seen against the identity of the run to do there."""

    holds_run: bool
    same: bool
    done: bool
    differing: list[str] = field(default_factory=list)
    differing_keys: list[str] = field(default_factory=list)


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
    seen, legacy = _with_recorded_norm_batch(directory, stored, identity, done)
    lines = _norm_batch_lines(differences(seen, identity), seen, identity, legacy)
    if legacy and not done and seen == identity:
        lines = [
            f"norm_batch {identity_norm_batch(seen)!r}, recorded by its checkpoint: its "
            f"{IDENTITY_FILE} predates the norm batch in the identity, and its checkpoints "
            "carry that older fingerprint, so this l2bn cannot continue it (finish it with "
            "the l2bn that started it)"
        ]
        return RunState(True, False, done, lines)
    return RunState(True, seen == identity, done, lines, differing_keys(seen, identity))


def _with_recorded_norm_batch(
    directory: Path, stored: dict[str, Any], identity: dict[str, Any], done: bool
) -> tuple[dict[str, Any], bool]:
    """``stored``, with the norm batch the run recorded (:func:`run_norm_batch`) when its
    identity names none although it was not the whole batch: a ``fingerprint.json`` from
    before the norm batch was part of the identity, of a torchrun run without --sync-bn.
    Looked up for a finished run, and for an unfinished one when this run's norm batch is
    not the whole batch (to say what differs). True when that changed ``stored``."""
    if "norm_batch" in stored or not (done or "norm_batch" in identity):
        return stored, False
    recorded = run_norm_batch(directory, stored.get("batch_size"))
    if recorded is None or recorded == stored.get("batch_size"):
        return stored, False
    return {**stored, "norm_batch": recorded}, True


def _norm_batch_lines(
    lines: list[str], seen: dict[str, Any], identity: dict[str, Any], legacy: bool
) -> list[str]:
    """:func:`differences` with the ``norm_batch`` line in samples on both sides (an
    identity without one normalizes over the whole batch)."""
    if seen.get("norm_batch") == identity.get("norm_batch"):
        return lines
    where = f" (recorded by its checkpoint; its {IDENTITY_FILE} predates it)" if legacy else ""
    line = f"norm_batch: {identity_norm_batch(seen)!r} -> {identity_norm_batch(identity)!r}"
    return [line + where if text.startswith("norm_batch: ") else text for text in lines]


def run_norm_batch(directory: str | Path, batch_size: Any) -> int | None:
    """The norm batch the run in ``directory`` recorded: its ``done`` marker's, else (a
    marker written before it recorded one, or an unfinished run) its last checkpoint's
    (:func:`l2bn.experiments.checkpoint.recorded_norm_batch`); None when unknown (no
    readable checkpoint, or one of a torchrun job from before checkpoints recorded it)."""
    from l2bn.experiments import checkpoint as ckpt

    directory = Path(directory)
    try:
        summary = json.loads((directory / DONE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = None
    recorded = summary.get("norm_batch") if isinstance(summary, dict) else None
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        return recorded
    if not isinstance(batch_size, int):
        return None
    try:
        found = ckpt.find_latest_checkpoint(directory)
    except ckpt.CheckpointError:
        return None
    return None if found is None else ckpt.recorded_norm_batch(found.state, batch_size)


def mismatch_error(directory: str | Path, state: RunState) -> RunMismatchError:
    """The one-line refusal: what differs, and the ways forward."""
    threads = ""
    if state.differing_keys == ["threads"]:
        threads = (
            "; a CPU run keeps the number of threads it started with (its numbers depend on "
            "it): leave out --threads (and the threads setting) to continue it with its own"
        )
    norm_batch = ""
    if "norm_batch" in state.differing_keys:
        norm_batch = (
            "; the norm batch is the number of samples each batch norm layer computes its "
            "statistics over (the whole batch in one process or under torchrun with "
            "--sync-bn, each process's share under torchrun without it): rerun with the "
            "run's number of processes and --sync-bn setting to reuse or continue it"
        )
    return RunMismatchError(
        f"{directory} holds a run with a different configuration "
        f"({'; '.join(state.differing)}){threads}{norm_batch}; keep it and choose another "
        "run directory (--name or --runs-dir), or pass --overwrite to delete it and train "
        "afresh"
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
