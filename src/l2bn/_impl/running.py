"""The running-statistics rule of L2BN: BatchNorm's, written once.

``running = (1 - factor) * running + factor * batch`` with the unbiased batch variance
``var * K / (K - 1)`` (``K`` values per channel); ``momentum=None`` makes ``factor`` the
cumulative-average weight ``1 / num_batches_tracked``. The fused C++ operators apply the
same rule inside their statistics pass.
"""

from __future__ import annotations

import torch
from torch import Tensor


def momentum_factor(momentum: float | None, num_batches_tracked: Tensor | None) -> float:
    """Advance ``num_batches_tracked`` by one and return this batch's update weight.

    As :class:`torch.nn.BatchNorm2d`: ``momentum``, or ``1 / num_batches_tracked`` (a
    cumulative average) when ``momentum`` is None. Call it once per training step of a
    layer that tracks running statistics.
    """
    if num_batches_tracked is None:
        return 0.0 if momentum is None else momentum
    num_batches_tracked.add_(1)
    if momentum is None:
        return 1.0 / float(num_batches_tracked)
    return momentum


@torch.no_grad()
def update_running_stats(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    mean: Tensor,
    var: Tensor,
    count: int | Tensor,
    factor: float | Tensor,
) -> None:
    """Move the running statistics towards the batch's ``mean`` and biased ``var``.

    ``count`` is the number of values per channel (a tensor for a global batch whose size is
    known only on the device, as in ``SyncL2BatchNorm``: then no host synchronization
    happens, and an empty global batch leaves the statistics unchanged).
    """
    if isinstance(count, Tensor):
        unbiased = var * (count / (count - 1).clamp(min=1))
        factor = (count > 0).to(mean.dtype) * factor
    elif running_var is not None and running_var.dtype != var.dtype:
        # A half buffer: the multiply writes it in the buffer's dtype (the cast folded in).
        unbiased = torch.mul(var, count / max(count - 1, 1), out=torch.empty_like(running_var))
    else:
        unbiased = var * (count / max(count - 1, 1))
    for buf, value in ((running_mean, mean), (running_var, unbiased)):
        if buf is None:
            continue
        weight = factor.to(buf.dtype) if isinstance(factor, Tensor) else factor
        buf.lerp_(value.to(buf.dtype), weight)


def update_from_batch(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    mean: Tensor,
    var: Tensor,
    x: Tensor,
    factor: float,
) -> None:
    """:func:`update_running_stats` for the batch ``x`` of shape ``(N, C, *S)`` (``N * S``
    values per channel); nothing to do when the layer tracks no running statistics."""
    if running_mean is not None or running_var is not None:
        count = x.numel() // x.shape[1]
        update_running_stats(running_mean, running_var, mean, var, count, factor)
