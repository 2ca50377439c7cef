"""Per-(sample, channel) moments and the L2BN channel statistics built from them.

Notation of paper eq. (3): input ``x`` of shape ``(N, C, M)`` after
flattening the spatial dims, ``D = C * M`` values per sample, ``K = N * M``
values per channel. The l2-normalized input is ``xh[n] = x[n] / rho[n]`` with
``rho[n] = max(||x[n]||, l2_eps) / sqrt(D)`` (``scale=True``) or
``max(||x[n]||, l2_eps)`` (``scale=False``).

Everything batch normalization needs about ``xh`` follows from two numbers per
``(n, c)``: the spatial mean of ``x`` and its spatial (population) variance.

* Generic path (every device but the CPU fast path; ``torch.compile``): the variance comes
  from ATen's variance reduction (Welford's update on GPUs, as BatchNorm's statistics;
  a two-pass sum in double on CPU), which needs no shift and has no cancellation, and reads
  ``x`` once; half and bfloat16 input is read as it is, with float32 results (a second
  reduction gives the float32 mean). No branch on data, no full-size temporary.
* CPU fast path (float32/float64): a sum and a sum of squares, accumulated in float64;
  the few rows whose one-pass variance would lose precision are recomputed centred (a
  data-dependent branch, which costs nothing on the CPU).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from l2bn._impl.passes import accumulation_dtype, fast_applies, input_sums, rows
from l2bn._impl.sample_scale import norm_divisor
from l2bn._impl.sample_scale import sample_scale as _rho
from l2bn._impl.transforms import compiling

__all__ = [
    "BatchStats",
    "ChannelStats",
    "RowMoments",
    "accumulation_dtype",
    "batch_stats",
    "channel_stats",
    "input_moments",
    "inverse_scale_limit",
    "row_moments",
    "sample_scale",
    "sample_scale_direct",
]

# A row's one-pass variance is trusted when mean^2 + var <= COND * var, i.e. the
# cancellation in E[x^2] - E[x]^2 costs at most log2(COND) bits (CPU fast path).
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
    if not fast_applies(x):
        return _generic_moments(x), None
    s1, s2, buffer = input_sums(x)
    return _moments_from_sums(s1, s2, rows(x)), buffer


def row_moments(x3: Tensor) -> RowMoments:
    """Mean and variance of every ``(n, c)`` row of ``x3`` of shape ``(N, C, M)``."""
    return input_moments(x3)[0]


def _generic_moments(x: Tensor) -> RowMoments:
    """Population mean and variance over the positions of each ``(n, c)`` row of ``x``
    (shape ``(N, C, *S)``), in the accumulation dtype: one variance reduction (and for half
    input one mean reduction) over dims ``2..``, no reshape, no converted copy of ``x``.

    With ``out=`` in float32, ``torch.var`` of half/bfloat16 input accumulates and stores in
    float32 (the reduction BatchNorm uses for its statistics on CUDA). Under
    ``torch.compile`` the cast is written out instead (the compiler fuses it into the
    reduction; a traced ``out=`` would round the variance to ``x``'s dtype first).
    """
    acc = accumulation_dtype(x)
    if x.dim() == 2:
        # One position per row: the mean is x (converted to acc, no reduction) and the
        # variance an expanded zero (0 for a non-finite x too, so ||x_n|| stays exact).
        mean = x.to(acc)
        return RowMoments(mean, mean.new_zeros(()).expand_as(mean))
    dims = tuple(range(2, x.dim()))
    if x.dtype == acc or compiling():
        var, mean = torch.var_mean(x.to(acc), dim=dims, correction=0)
        return RowMoments(mean, var)
    mean = torch.mean(x, dim=dims, dtype=acc)
    var = torch.var(x, dim=dims, correction=0, out=torch.empty_like(mean))
    return RowMoments(mean, var)


def _moments_from_sums(s1: Tensor, s2: Tensor, x3: Tensor) -> RowMoments:
    """Mean and variance from sum and sum of squares; ill-conditioned rows are recomputed
    (CPU fast path only: the test reads a value back to the host)."""
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
    if bool(ill.any()):
        var = torch.where(ill, _centred_var(x3, mean, ill), var)
    return RowMoments(mean, var.clamp_(min=0))


def _centred_var(x3: Tensor, mean: Tensor, ill: Tensor) -> Tensor:
    """Two-pass (corrected) variance of the rows selected by ``ill``; other rows are 0."""
    n_idx, c_idx = ill.nonzero(as_tuple=True)
    rows_ = x3[n_idx, c_idx].to(mean.dtype) - mean[n_idx, c_idx].unsqueeze(1)
    m = rows_.shape[1]
    centred = (torch.linalg.vector_norm(rows_, dim=1).square() - rows_.sum(1).square() / m) / m
    out = torch.zeros_like(mean)
    out[n_idx, c_idx] = centred
    return out


class BatchStats(NamedTuple):
    """The training statistics of eqs. (2)-(3), in the accumulation dtype."""

    inv_rho: Tensor  # (N, 1) 1 / rho[n]
    inv_rho_sq: Tensor  # (N, 1) 1 / rho[n]^2
    row_mean: Tensor  # (N, C) m[n, c]: spatial mean of xh
    row_var: Tensor  # (N, C) v[n, c]: spatial variance of xh
    dev: Tensor  # (N, C) m[n, c] - mu[c]
    mean: Tensor  # (C,) mu: batch mean of xh
    var: Tensor  # (C,) delta^2: biased batch variance of xh


def inverse_scale_limit(values_per_sample: int, l2_eps: float, scale: bool) -> float:
    """The largest ``1 / rho[n]``: ``sqrt(D) / l2_eps`` (scaled form) or ``1 / l2_eps``.

    A sample's norm was clamped by ``l2_eps`` (eq. 3) exactly when its ``1 / rho`` equals
    this limit; ``inf`` for ``l2_eps = 0``.
    """
    return norm_divisor(values_per_sample, scale) / l2_eps if l2_eps > 0 else math.inf


def batch_stats(moments: RowMoments, spatial: int, l2_eps: float, scale: bool) -> BatchStats:
    """``1 / rho`` (eq. 3) and the batch statistics of ``xh = x / rho`` (eq. 2) from the row
    moments of ``x`` (``(N, C)`` each), in eleven ``O(N * C)`` operations (twelve for the
    plain form), none of which reads a value back.

    * ``||x_n||^2 / D = mean_c (var + mean^2)``: a mean of non-negative terms (no
      cancellation), so ``1 / rho = min(rsqrt(||x_n||^2 / D), sqrt(D) / l2_eps)`` (scaled
      form; ``/ sqrt(D)`` more, and limit ``1 / l2_eps``, for the plain form).
    * ``m = mean / rho``, ``v = var / rho^2``; ``mu = mean_n m`` and
      ``delta^2 = mean_n (v + (m - mu)^2)``: rows of ``M`` values each, combined as Chan et
      al.'s pairwise update with equal counts, with explicitly centred deviations.
    """
    mean, var = moments
    values = spatial * mean.shape[1]
    # E_s[x^2] of each row. A row holding +-inf (of one sign) has mean +-inf and variance
    # NaN; its E_s[x^2] is +inf (||x_n|| = inf, 1 / rho = 0: the sample's other channels are
    # 0, as in eq. 3), so the NaN variance is read as 0 here. A NaN in the row keeps its
    # mean NaN, hence E_s[x^2] NaN and the whole sample NaN, as eq. 3 gives.
    second = torch.addcmul(var.nan_to_num(0.0, math.inf), mean, mean)
    inv = second.mean(dim=1, keepdim=True).rsqrt_()  # sqrt(D) / ||x_n||, (N, 1)
    if not scale:
        inv = inv.mul_(1.0 / math.sqrt(values))
    inv = inv.clamp_(max=inverse_scale_limit(values, l2_eps, scale))
    inv_sq = inv.square()
    row_mean = mean * inv
    row_var = var * inv_sq
    mu = row_mean.mean(dim=0)
    dev = row_mean - mu
    var_c = torch.addcmul(row_var, dev, dev).mean(dim=0)
    return BatchStats(inv, inv_sq, row_mean, row_var, dev, mu, var_c)


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
