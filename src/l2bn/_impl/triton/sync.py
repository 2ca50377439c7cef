"""SyncL2BatchNorm's full-size passes on the Triton operators (paper eqs. 2-3).

:class:`l2bn._impl.sync_function.SyncL2BatchNormFunction` runs four full-size passes around
its two collectives; these are the four on the operators of :mod:`.ops` (the same kernels
as the single-process training path), with the signatures of the PyTorch passes:

* forward: :func:`local_stats` (``row_sums`` and ``forward_finalize`` launches: ``rho``,
  activity and the row moments of ``x``; then, in torch on ``(N, C)`` tensors, the row
  moments of ``xh`` and this process's channel mean and ``M2``), the all-gather and the
  coefficients ``a[n, c]``, ``b[c]`` from the group's statistics (torch, ``O(N * C)``),
  then :func:`affine_output` (one ``affine`` launch);
* backward: :func:`grad_row_sums` (one ``grad_sums`` launch), the channel sums, the
  all-reduce and the coefficients ``P, Q, R`` (torch, ``O(N * C)``), then
  :func:`grad_combine` (one ``grad_input`` launch).

Statistics are float32 for float32, float16 and bfloat16 input. A process holding no
sample launches nothing and contributes a count of 0. Nothing reads a value back to the
host, except the group's count on a process holding at most one value per channel
(:func:`l2bn._impl.sync_stats.check_global_count`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from l2bn._impl.moments import RowMoments
from l2bn._impl.pytorch import GradRowSums
from l2bn._impl.sync_stats import LocalStats, empty_local_stats, local_stats_from_moments
from l2bn._impl.triton import ops  # registers torch.ops.l2bn_triton.*

_row_moments = torch.ops.l2bn_triton.row_moments.default
_scale_shift = torch.ops.l2bn_triton.scale_shift.default
_grad_row_sums = torch.ops.l2bn_triton.grad_row_sums.default
_grad_combine = torch.ops.l2bn_triton.grad_combine.default

__all__ = ["affine_output", "grad_combine", "grad_row_sums", "local_stats", "ops"]


def local_stats(x: Tensor, l2_eps: float, scale: bool) -> LocalStats:
    """This process's statistics of ``x`` (``(N, C, *S)``, ``N`` may be 0), float32."""
    n, c = x.shape[0], x.shape[1]
    if n == 0:
        return empty_local_stats(x, torch.float32)
    rho, active, mean, var = _row_moments(x, l2_eps, scale)
    return local_stats_from_moments(RowMoments(mean, var), rho, active, x.numel() // (n * c))


def affine_output(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``a[n, c] * x + b[c]`` (float32 ``a`` ``(N, C)``, ``b`` ``(C,)``) in ``x``'s dtype
    and layout."""
    return _scale_shift(x, a, b)


def grad_row_sums(dy: Tensor, x: Tensor, mu: Tensor, rho: Tensor) -> GradRowSums:
    """Per-``(n, c)`` ``sum_s dy`` and ``sum_s dy * (x - mu[c] * rho[n])``, float32."""
    t1, t2 = _grad_row_sums(dy, x, mu, rho)
    return GradRowSums(t1, t2, None)


def grad_combine(
    dy: Tensor, x: Tensor, p: Tensor, q: Tensor, r: Tensor, out: Tensor | None = None
) -> Tensor:
    """``p * dy + q * x + r`` with ``(N, C)`` coefficients, in ``x``'s dtype and layout
    (``out``, a buffer the PyTorch passes may reuse, is not needed here)."""
    return _grad_combine(dy, x, p, q, r)
