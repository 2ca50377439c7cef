"""Channel statistics of the l2-normalized input, combined across processes (paper eq. 2).

Only channel statistics cross processes: ``rho[n]`` of eq. (3) depends on sample ``n``
alone, so each rank normalizes its own samples and then shares, per channel, its count,
mean and sum of squared deviations ``M2`` of ``xh = x / rho``.

Why an all-gather of ``(count, mean, M2)`` and not an all-reduce of ``(count, sum, sum of
squares)``: the variance from raw power sums, ``E[xh^2] - E[xh]^2``, cancels
catastrophically when a channel's mean is large against its spread (after the
l2-normalization a channel with a constant offset has ``|mu| ~ 1`` and a tiny variance;
in float32 the one-pass form can lose every digit). Shifting the sums by a value common
to all ranks would fix that only if a good shift existed: the running mean is absent
with ``track_running_stats=False`` and far from the batch mean in the first steps.
Gathering each rank's ``(count, mean, M2)`` and merging them with Chan et al.'s pairwise
update, ``M2 = sum_r M2_r + sum_r count_r * (mean_r - mu)^2``, adds only non-negative
terms: exact whatever the offset, still one collective per layer, no host
synchronization, and ranks holding no sample simply contribute ``count = 0``. The
payload is ``world_size * (2C + 1)`` numbers, the same as ``torch.nn.SyncBatchNorm``'s
all-gather (a few MB at C = 2048 on 256 GPUs). Counts travel in the accumulation dtype
with the moments (exact up to 2**24 values per channel and rank in float32; beyond, a
relative rounding of 6e-8 in a weight).

A group's batch of one value per channel is refused after the gather, on every rank
(:func:`check_global_count`); only a rank holding at most one value per channel reads the
gathered count back to the host for that.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from l2bn._impl import moments as _stats


class GlobalStats(NamedTuple):
    """Channel statistics of ``xh`` over the samples of every rank of the group."""

    mean: Tensor  # (C,) mu
    var: Tensor  # (C,) biased variance delta^2
    count: Tensor  # 0-d: values per channel over all ranks (N_total * M)


class LocalStats(NamedTuple):
    """What one rank knows about its own samples."""

    moments: _stats.RowMoments  # per-(n, c) mean and variance of x
    rho: Tensor  # (N,) eq. (3)
    active: Tensor  # (N,) True (or 1) where the sample norm was not clamped by l2_eps
    row_mean: Tensor  # (N, C) spatial mean of xh
    row_var: Tensor  # (N, C) spatial variance of xh
    count: int  # N * M
    mean: Tensor  # (C,) mean of xh over this rank's values (0 when N = 0)
    m2: Tensor  # (C,) sum of squared deviations from ``mean`` (0 when N = 0)


def local_stats(x3: Tensor, l2_eps: float, scale: bool) -> LocalStats:
    """Per-rank statistics of ``x3`` of shape ``(N, C, M)``; ``N`` may be 0."""
    n, _c, spatial = x3.shape
    if n == 0:
        # Built here rather than by the core kernels, which need not accept empty input.
        return empty_local_stats(x3, _stats.accumulation_dtype(x3))
    moments = _stats.row_moments(x3)
    rho, active = _stats.sample_scale(moments, spatial, l2_eps, scale)
    return local_stats_from_moments(moments, rho, active, spatial)


def empty_local_stats(x: Tensor, dtype: torch.dtype) -> LocalStats:
    """The statistics of a rank holding no sample (``x`` of shape ``(0, C, *S)``): count 0,
    zero channel mean and ``M2``, in ``dtype`` (the statistics dtype of the ranks that
    hold samples: they meet in one all-gather)."""
    c = x.shape[1]
    empty = x.new_zeros((0, c), dtype=dtype)
    zeros = empty.new_zeros(c)
    moments = _stats.RowMoments(empty, empty)
    return LocalStats(moments, empty[:, 0], empty[:, 0] > 0, empty, empty, 0, zeros, zeros)


def local_stats_from_moments(
    moments: _stats.RowMoments, rho: Tensor, active: Tensor, spatial: int
) -> LocalStats:
    """Per-rank statistics from the row moments of ``x`` (``(N, C)``, ``N > 0``), ``rho``
    and ``active`` (``(N,)``) and the positions per row ``spatial``: the row moments of
    ``xh = x / rho`` and this rank's channel mean and ``M2`` (eq. 2, by
    :func:`l2bn._impl.moments.channel_stats`). The PyTorch and the Triton passes of the
    synchronized layer both end their forward reduction here."""
    count = moments.mean.shape[0] * spatial
    stats = _stats.channel_stats(moments, rho)
    m2 = stats.var * count
    return LocalStats(moments, rho, active, stats.row_mean, stats.row_var, count, stats.mean, m2)


def _all_gather(output: Tensor, local: Tensor, group: Any) -> None:
    # torch >= 2.12 names it all_gather_single; all_gather_into_tensor is deprecated there.
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(output, local, group=group)


def gather_channel_stats(local: LocalStats, group: Any) -> GlobalStats:
    """One all-gather of ``(count, mean, M2)`` per rank, merged by Chan's pairwise rule.

    Raises:
        ValueError: the group's batch holds exactly one value per channel (on every rank
            alike; see :func:`check_global_count`).
    """
    c = local.mean.numel()
    packed = torch.cat([local.mean.new_full((1,), float(local.count)), local.mean, local.m2])
    world = dist.get_world_size(group)
    table = packed.new_empty(world * packed.numel())
    _all_gather(table, packed, group)
    table = table.view(world, 2 * c + 1)
    counts, means, m2s = table[:, :1], table[:, 1 : c + 1], table[:, c + 1 :]
    total = counts.sum()
    check_global_count(local.count, total, world)
    denom = total.clamp(min=1)
    mean = (counts * means).sum(dim=0) / denom
    m2 = m2s.sum(dim=0) + (counts * (means - mean).square()).sum(dim=0)
    return GlobalStats(mean, m2 / denom, total)


def check_global_count(local_count: int, total: Tensor, world: int) -> None:
    """Refuse a training batch of one value per channel over the whole group, as
    :func:`l2bn.functional.validate_input` refuses it in one process (its variance is 0 and
    its unbiased variance undefined: the output would be the bias and the running variance
    would move towards 0).

    ``local_count``: this rank's values per channel; ``total``: the gathered count over the
    ``world`` ranks (0-d). Only a rank holding at most one value reads ``total`` back to the
    host: a rank with more knows the total exceeds one, so the usual step keeps no host
    synchronization. Every rank sees the same ``total``, so all ranks raise or none does
    (none is left waiting in a collective).

    Raises:
        ValueError: ``total`` is 1.
    """
    if local_count > 1 or int(total) != 1:
        return
    raise ValueError(
        "l2bn: expected more than 1 value per channel when training, got 1 value per "
        f"channel over the {world} ranks of the process group (this rank holds "
        f"{local_count})"
    )
