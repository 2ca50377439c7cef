"""Per-(sample, channel) moments and the L2BN channel statistics built from them.

Notation of paper eq. (3): input ``x`` of shape ``(N, C, M)`` after
flattening the spatial dims, ``D = C * M`` values per sample, ``K = N * M``
values per channel. The l2-normalized input is ``xh[n] = x[n] / rho[n]`` with
``rho[n] = max(||x[n]||, l2_eps) / sqrt(D)`` (``scale=True``) or
``max(||x[n]||, l2_eps)`` (``scale=False``).

Everything batch normalization needs about ``xh`` follows from two numbers per
``(n, c)``: the spatial mean of ``x`` and its spatial (population) variance.
Both come from one read of ``x`` (a sum and a sum of squares); the variance is
recomputed by a centred second pass only for the rows where the one-pass form
would lose precision, so ordinary inputs pay for one pass.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from l2bn._impl.passes import accumulation_dtype, input_sums, rows
from l2bn._impl.sample_scale import sample_scale as _rho
from l2bn._impl.transforms import compiling

__all__ = [
    "ChannelStats",
    "RowMoments",
    "accumulation_dtype",
    "channel_stats",
    "input_moments",
    "row_moments",
    "sample_scale",
    "sample_scale_direct",
]

# A row's one-pass variance is trusted when mean^2 + var <= COND * var, i.e. the
# cancellation in E[x^2] - E[x]^2 costs at most log2(COND) bits.
_COND_LIMIT = {torch.float64: 1e4}
_COND_LIMIT_DEFAULT = 16.0


class RowMoments(NamedTuple):
    """Spatial moments of each ``(n, c)`` row of ``x``, in the accumulation dtype."""

    mean: Tensor  # (N, C): mean over the M positions
    var: Tensor  # (N, C): population variance over the M positions


def input_moments(x: Tensor) -> tuple[RowMoments, Tensor | None]:
    """Row moments of ``x`` of shape ``(N, C, *S)``, plus a reusable output buffer or None.

    The buffer is a fresh tensor shaped like ``x`` that the reduction had to fill; the
    caller may overwrite it with the layer's output (see :func:`l2bn._impl.passes.input_sums`).
    """
    s1, s2, buffer = input_sums(x)
    return _moments_from_sums(s1, s2, rows(x)), buffer


def row_moments(x3: Tensor) -> RowMoments:
    """Mean and variance of every ``(n, c)`` row of ``x3`` of shape ``(N, C, M)``."""
    return input_moments(x3)[0]


def _moments_from_sums(s1: Tensor, s2: Tensor, x3: Tensor) -> RowMoments:
    """Mean and variance from sum and sum of squares; ill-conditioned rows are recomputed."""
    m = x3.shape[2]
    if m == 1:
        # (N, C) input: the mean is x itself (a view when no cast was needed) and the
        # variance an expanded zero, so that saving them for backward costs no memory.
        return RowMoments(s1, s1.new_zeros(()).expand_as(s1))
    mean = s1 / m
    second = s2.div_(m)
    var = torch.addcmul(second, mean, mean, value=-1)
    limit = _COND_LIMIT.get(s1.dtype, _COND_LIMIT_DEFAULT)
    ill = var * limit <= second
    if compiling() or x3.device.type != "cpu":
        # No data-dependent branch (no host synchronization on a GPU, none for
        # torch.compile / torch.export): the centred variance replaces ill-conditioned rows.
        var = torch.where(ill, _centred_var_all(x3, mean), var)
    elif bool(ill.any()):
        var = torch.where(ill, _centred_var(x3, mean, ill), var)
    return RowMoments(mean, var.clamp_(min=0))


def _centred_var_all(x3: Tensor, mean: Tensor) -> Tensor:
    """Two-pass (corrected) variance of every row."""
    centred = x3.to(mean.dtype) - mean.unsqueeze(2)
    m = centred.shape[2]
    return (centred.square().sum(2) - centred.sum(2).square() / m) / m


def _centred_var(x3: Tensor, mean: Tensor, ill: Tensor) -> Tensor:
    """Two-pass (corrected) variance of the rows selected by ``ill``; other rows are 0."""
    n_idx, c_idx = ill.nonzero(as_tuple=True)
    rows_ = x3[n_idx, c_idx].to(mean.dtype) - mean[n_idx, c_idx].unsqueeze(1)
    m = rows_.shape[1]
    centred = (torch.linalg.vector_norm(rows_, dim=1).square() - rows_.sum(1).square() / m) / m
    out = torch.zeros_like(mean)
    out[n_idx, c_idx] = centred
    return out


def sample_scale(
    moments: RowMoments, spatial: int, l2_eps: float, scale: bool
) -> tuple[Tensor, Tensor]:
    """``rho[n]`` of eq. (3) and a 0/1 mask of samples whose norm was not clamped.

    ``||x[n]||^2 = sum_c M * (var + mean^2)``: a sum of non-negative terms, no cancellation.
    """
    norm_sq = (moments.var + moments.mean.square()).sum(dim=1) * spatial
    norm = norm_sq.sqrt()
    active = norm > l2_eps
    rho = _rho(norm, spatial * moments.mean.shape[1], l2_eps, scale)
    return rho, active


def sample_scale_direct(x: Tensor, l2_eps: float, scale: bool) -> Tensor:
    """``rho[n]`` computed straight from ``x`` (eval path: no moments needed)."""
    acc = accumulation_dtype(x)
    # Reduce over every dim but the batch: no reshape, hence no copy of channels_last input.
    norm = torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())), dtype=acc)
    rho = _rho(norm, math.prod(x.shape[1:]), l2_eps, scale)
    return rho


class ChannelStats(NamedTuple):
    """Batch statistics of the l2-normalized input, per channel (eq. 2)."""

    mean: Tensor  # (C,) mu
    var: Tensor  # (C,) biased variance (delta^2 of eq. 2)
    row_mean: Tensor  # (N, C) m[n, c] = spatial mean of xh
    row_var: Tensor  # (N, C) v[n, c] = spatial variance of xh


def channel_stats(moments: RowMoments, rho: Tensor) -> ChannelStats:
    """Combine per-row moments of ``xh = x / rho`` into per-channel mean and variance.

    Each row holds M values, so the channel mean is the plain mean over rows and
    the variance is within-row plus between-row variance (Chan et al.'s pairwise
    combination with equal counts), which is free of cancellation.
    """
    inv = rho.reciprocal().unsqueeze(1)
    row_mean = moments.mean * inv
    row_var = moments.var * inv.square()
    mean = row_mean.mean(dim=0)
    var = (row_var + (row_mean - mean).square()).mean(dim=0)
    return ChannelStats(mean, var, row_mean, row_var)
