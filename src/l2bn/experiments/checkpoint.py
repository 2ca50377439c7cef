"""Atomic, verifiable checkpoints that load with or without DistributedDataParallel.

``save_checkpoint`` writes ``checkpoint.pt`` through a temporary file (write, flush, fsync,
``os.replace``), after moving the previous good checkpoint to ``checkpoint.prev.pt``; a crash at
any moment leaves at least one complete checkpoint. The model's state is always the
unwrapped module's ``state_dict`` (no ``module.`` prefix), so a checkpoint from a torchrun job
loads in one process and the reverse.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from l2bn.experiments.runs import CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "epoch", "model", "optimizer", "scheduler")


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


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically as ``directory/checkpoint.pt``; keep the old one as prev."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CHECKPOINT_FILE
    previous = directory / PREVIOUS_CHECKPOINT_FILE
    tmp = directory / (CHECKPOINT_FILE + ".tmp")
    payload = {"format_version": FORMAT_VERSION, **state}
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    if target.exists():
        os.replace(target, previous)
    os.replace(tmp, target)
    _fsync_dir(directory)
    return target


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Load and check one checkpoint file; CheckpointError names the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, wrong magic: all mean "corrupted"
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupted and cannot be loaded "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(
            f"checkpoint {path} is not an l2bn training checkpoint "
            f"(expected keys {', '.join(REQUIRED_KEYS)})"
        )
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state['format_version']}, "
            f"this l2bn reads version {FORMAT_VERSION}"
        )
    return state


def load_latest_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    """The newest good checkpoint of a run directory, or None when it has none.

    A bad ``checkpoint.pt`` falls back to ``checkpoint.prev.pt`` with a warning; when both
    are unusable, CheckpointError lists both problems.
    """
    directory = Path(directory)
    latest, previous = directory / CHECKPOINT_FILE, directory / PREVIOUS_CHECKPOINT_FILE
    if not latest.exists() and not previous.exists():
        return None
    try:
        return load_checkpoint_file(latest)
    except CheckpointError as first:
        if not previous.exists():
            raise
        try:
            state = load_checkpoint_file(previous)
        except CheckpointError as second:
            raise CheckpointError(f"{first}; and the previous one: {second}") from None
        warnings.warn(
            f"{first}; resuming from the previous good checkpoint {previous} "
            f"(epoch {state['epoch']})",
            RuntimeWarning,
            stacklevel=2,
        )
        return state


def scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """The scheduler's state without its lambda objects (they are rebuilt from the config)."""
    state = dict(scheduler.state_dict())
    if "lr_lambdas" in state:
        state["lr_lambdas"] = [None] * len(state["lr_lambdas"])
    return state


def load_model_state(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load weights into ``model`` (wrapped or not); accepts a ``module.``-prefixed dict too."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
    unwrap(model).load_state_dict(state_dict)
