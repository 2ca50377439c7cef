"""Running-statistics bookkeeping shared by the mixed norms (SN, BCN, BIN).

The rule is BatchNorm's, written once in :mod:`l2bn._impl.running`: an exponential average
with ``momentum``, or a cumulative average when ``momentum`` is None; the stored variance is
the unbiased one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from l2bn._impl import running


def register_running_stats(
    module: nn.Module, num_features: int, track: bool, device: Any = None, dtype: Any = None
) -> None:
    """Add ``running_mean``, ``running_var`` and ``num_batches_tracked`` (or None) buffers."""
    if track:
        factory = {"device": device, "dtype": dtype}
        module.register_buffer("running_mean", torch.zeros(num_features, **factory))
        module.register_buffer("running_var", torch.ones(num_features, **factory))
        count = torch.tensor(0, dtype=torch.long, device=device)
        module.register_buffer("num_batches_tracked", count)
    else:
        module.register_buffer("running_mean", None)
        module.register_buffer("running_var", None)
        module.register_buffer("num_batches_tracked", None)


@torch.no_grad()
def reset_running_stats(module: nn.Module) -> None:
    """Zero ``running_mean`` and ``num_batches_tracked`` and fill ``running_var`` with ones
    (the buffers :func:`register_running_stats` added); nothing when they are None."""
    if module.running_mean is not None:
        module.running_mean.zero_()
        module.running_var.fill_(1)
        module.num_batches_tracked.zero_()


def momentum_factor(module: nn.Module, momentum: float | None) -> float:
    """Count one more training batch and return the update factor, as BatchNorm does
    (the rule of :func:`l2bn._impl.running.momentum_factor`)."""
    if module.num_batches_tracked is None:
        return 0.0
    return running.momentum_factor(momentum, module.num_batches_tracked)


def update_running_stats(
    module: nn.Module, mean: Tensor, biased_var: Tensor, count: int, factor: float
) -> None:
    """Blend a batch's per-channel mean and (unbiased) variance into the running buffers
    (the rule of :func:`l2bn._impl.running.update_running_stats`)."""
    running.update_running_stats(
        module.running_mean, module.running_var, mean, biased_var, count, factor
    )


def check_4d(module: nn.Module, x: Tensor, num_features: int) -> None:
    """Clear errors for input that is not a (N, C, H, W) map with ``num_features`` channels."""
    name = type(module).__name__
    if x.dim() != 4:
        raise ValueError(f"{name}: expected 4D input (N, C, H, W), got {x.dim()}D input")
    if x.shape[1] != num_features:
        raise ValueError(
            f"{name}: expected {num_features} channels (dim 1), got {x.shape[1]} "
            f"(input shape {tuple(x.shape)})"
        )
