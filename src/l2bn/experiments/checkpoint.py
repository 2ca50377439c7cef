"""Atomic, verifiable checkpoints that load with or without DistributedDataParallel.

``save_checkpoint`` writes ``checkpoint.pt`` through a temporary file (write, flush, fsync,
``os.replace``), after moving the previous checkpoint to ``checkpoint.prev.pt``. A checkpoint
that fails to load is moved aside (``checkpoint.damaged-N.pt``, never over another file)
before the run goes on from the previous one, so that the next save never rotates a damaged
file over the good one: at every instant of a run, also across fallbacks and repeated
crashes, at least one complete checkpoint exists. Each checkpoint carries its run's
fingerprint and seed (:mod:`l2bn.experiments.identity`); :func:`check_checkpoint_belongs`
refuses one of another run. The model's state is always the unwrapped module's
``state_dict`` (no ``module.`` prefix), so a checkpoint from a torchrun job loads in one
process and the reverse.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from l2bn.experiments.runs import CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE

FORMAT_VERSION = 2
REQUIRED_KEYS = (
    "format_version",
    "epoch",
    "model",
    "optimizer",
    "scheduler",
    "fingerprint",
    "seed",
)
DAMAGED_PATTERN = "checkpoint.damaged-{}.pt"

# The steps of save_checkpoint, in order ("rotated" only when a checkpoint is replaced).
SAVE_STEPS = ("begin", "written", "synced", "rotated", "published")
# Test hook: called as SAVE_STEP_HOOK(step, epoch) at each step; crash tests raise there.
SAVE_STEP_HOOK: Callable[[str, int], None] | None = None


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupted or not an l2bn checkpoint."""


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    while hasattr(model, "module") and isinstance(
        model, (nn.parallel.DistributedDataParallel, nn.DataParallel)
    ):
        model = model.module
    return model


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _step(name: str, state: dict[str, Any]) -> None:
    if SAVE_STEP_HOOK is not None:
        SAVE_STEP_HOOK(name, int(state.get("epoch", 0)))


def _write_failed(tmp: Path, err: Exception) -> CheckpointError:
    """A one-line error for a checkpoint that could not be written (full disk, I/O error)."""
    tmp.unlink(missing_ok=True)
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).split("\n")[0]
    try:
        free = shutil.disk_usage(tmp.parent).free
        reason += f"; {free / 2**20:.0f} MiB free on its disk"
    except OSError:
        pass
    return CheckpointError(
        f"could not write checkpoint {tmp} ({reason}); the run keeps its previous checkpoint: "
        "free some space and continue with --resume"
    )


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically as ``directory/checkpoint.pt``; keep the old one as prev."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CHECKPOINT_FILE
    previous = directory / PREVIOUS_CHECKPOINT_FILE
    tmp = directory / (CHECKPOINT_FILE + ".tmp")
    payload = {"format_version": FORMAT_VERSION, **state}
    _step("begin", state)
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            _step("written", state)
            handle.flush()
            os.fsync(handle.fileno())
    except (OSError, RuntimeError) as err:
        raise _write_failed(tmp, err) from None
    _step("synced", state)
    if target.exists():
        os.replace(target, previous)
        _step("rotated", state)
    os.replace(tmp, target)
    _step("published", state)
    _fsync_dir(directory)
    return target


def _load_problem(path: Path, err: Exception) -> str:
    """Why torch.load failed, in l2bn's words (never torch's advice to disable weights_only)."""
    unpickling = isinstance(err, pickle.UnpicklingError)
    found = re.search(r"GLOBAL (\S+)", str(err)) if unpickling else None
    if found:
        return (
            f"checkpoint {path} holds a Python object ({found.group(1)}), not only tensors and "
            "plain data; l2bn does not load such a file (loading it could run code)"
        )
    detail = str(err).split("\n")[0].split(". ")[0] if isinstance(err, RuntimeError) else ""
    return f"checkpoint {path} is truncated or corrupted and cannot be loaded" + (
        f" ({detail})" if detail else ""
    )


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Load and check one checkpoint file; CheckpointError names the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, wrong magic: all mean "corrupted"
        raise CheckpointError(_load_problem(path, err)) from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"checkpoint {path} is not an l2bn training checkpoint")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state['format_version']}, "
            f"this l2bn reads version {FORMAT_VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is not a complete l2bn training checkpoint "
            f"(missing {', '.join(missing)})"
        )
    return state


@dataclass
class FoundCheckpoint:
    """The newest loadable checkpoint of a run, and the newer files that failed to load."""

    path: Path
    state: dict[str, Any]
    rejected: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def find_latest_checkpoint(directory: str | Path) -> FoundCheckpoint | None:
    """The newest good checkpoint of a run directory, or None when it has none.

    A bad ``checkpoint.pt`` (missing, truncated, corrupted) falls back to
    ``checkpoint.prev.pt``, and is listed in ``rejected`` when it exists; when both are
    unusable, CheckpointError lists both problems. Nothing is moved or written.
    """
    directory = Path(directory)
    latest, previous = directory / CHECKPOINT_FILE, directory / PREVIOUS_CHECKPOINT_FILE
    if not latest.exists() and not previous.exists():
        return None
    try:
        return FoundCheckpoint(latest, load_checkpoint_file(latest))
    except CheckpointError as first:
        if not previous.exists():
            raise
        try:
            state = load_checkpoint_file(previous)
        except CheckpointError as second:
            raise CheckpointError(f"{first}; and the previous one: {second}") from None
        rejected = [latest] if latest.exists() else []
        return FoundCheckpoint(previous, state, rejected, [str(first)])


def load_latest_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    """The state of :func:`find_latest_checkpoint`, with a warning when it fell back."""
    found = find_latest_checkpoint(directory)
    if found is None:
        return None
    if found.problems:
        warnings.warn(
            f"{'; '.join(found.problems)}; resuming from the previous good checkpoint "
            f"{found.path} (epoch {found.state['epoch']})",
            RuntimeWarning,
            stacklevel=2,
        )
    return found.state


def set_aside(path: str | Path) -> Path:
    """Move a checkpoint that failed to load to ``checkpoint.damaged-N.pt`` (the first free
    N) next to it, so that no later save rotates it over a good one; it is never deleted.
    The caller holds the run's lock, so no other process names files meanwhile."""
    path = Path(path)
    number = 1
    while (path.parent / DAMAGED_PATTERN.format(number)).exists():
        number += 1
    target = path.parent / DAMAGED_PATTERN.format(number)
    os.rename(path, target)
    _fsync_dir(path.parent)
    return target


def check_checkpoint_belongs(
    path: str | Path, state: dict[str, Any], fingerprint: str, seed: int
) -> None:
    """CheckpointError naming ``path`` unless it was written by the run with this
    fingerprint and seed (a checkpoint copied from another run is refused)."""
    if int(state["seed"]) != int(seed):
        raise CheckpointError(
            f"checkpoint {path} belongs to seed {state['seed']}, not to this run's seed {seed}; "
            "it was copied from another run: remove it, or restore this run's own checkpoint"
        )
    if state["fingerprint"] != fingerprint:
        raise CheckpointError(
            f"checkpoint {path} was written by a run with another configuration (fingerprint "
            f"{str(state['fingerprint'])[:12]}, this run's {fingerprint[:12]}); it was copied "
            "from another run: remove it, or restore this run's own checkpoint"
        )


def recorded_norm_batch(state: dict[str, Any], batch_size: int) -> int | None:
    """The norm batch (:func:`l2bn.experiments.distributed.norm_batch`) the checkpoint
    ``state`` of a run with total batch ``batch_size`` was trained with. A checkpoint
    written before checkpoints recorded it knows it for one process only (the whole
    batch); under torchrun it is unknown (None): ``--sync-bn`` was not recorded."""
    saved = state.get("norm_batch")
    if saved is not None:
        return int(saved)
    return int(batch_size) if int(state.get("world_size", 1)) == 1 else None


def scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """The scheduler's state without its lambda objects (they are rebuilt from the config)."""
    state = dict(scheduler.state_dict())
    if "lr_lambdas" in state:
        state["lr_lambdas"] = [None] * len(state["lr_lambdas"])
    return state


def load_model_state(
    model: nn.Module, state_dict: dict[str, torch.Tensor], source: str | Path = "checkpoint"
) -> None:
    """Load weights into ``model`` (wrapped or not); accepts a ``module.``-prefixed dict too.

    A state of another architecture (other parameter names or shapes) is a CheckpointError
    naming ``source`` and summarizing the difference, instead of torch's full listing.
    """
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
    target = unwrap(model)
    expected = target.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    reshaped = [
        key
        for key in expected
        if key in state_dict and tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or reshaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                parts.append(f"{len(keys)} {label} tensors (e.g. {keys[0]})")
        if reshaped:
            key = reshaped[0]
            parts.append(
                f"{len(reshaped)} of other shapes (e.g. {key}: "
                f"{tuple(state_dict[key].shape)} vs {tuple(expected[key].shape)})"
            )
        raise CheckpointError(
            f"{source} holds weights of another architecture than {type(target).__name__} "
            f"({', '.join(parts)})"
        )
    target.load_state_dict(state_dict)
