"""The fused training-mode L2BN: one reduction and one elementwise pass each way.

Forward (paper eqs. 2-3): ``y = a[n, c] * x + b[c]`` with
``a = gamma / (rho[n] * sqrt(var + eps))`` and ``b = beta - gamma * mu / sqrt(var + eps)``.

Backward: with ``T1 = sum_s dy`` and ``T2 = sum_s dy * x`` per ``(n, c)``, the input
gradient is ``dx = P[n, c] * dy + Q[n, c] * x + R[n, c]``, where P, Q, R are built from
``O(N * C)`` statistics (derivation in DESIGN.md). Only ``x`` and those statistics
are saved for backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from l2bn import _stats


def _coeff_shape(x: Tensor) -> tuple[int, ...]:
    return (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)


def _channel_shape(x: Tensor) -> tuple[int, ...]:
    return (x.shape[1],) + (1,) * (x.dim() - 2)


def affine_output(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``a[n, c] * x + b[c]`` in the accumulation dtype, returned in ``x``'s dtype."""
    y = torch.addcmul(b.reshape(_channel_shape(x)), x, a.reshape(_coeff_shape(x)))
    return y if y.dtype == x.dtype else y.to(x.dtype)


def train_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, l2_eps: float, scale: bool
) -> tuple[Tensor, _stats.ChannelStats, _stats.RowMoments, Tensor, Tensor, Tensor]:
    """Training-mode forward; returns the output and what backward needs."""
    n, c = x.shape[0], x.shape[1]
    x3 = x.reshape(n, c, -1)
    moments = _stats.row_moments(x3)
    rho, active = _stats.sample_scale(moments, x3.shape[2], l2_eps, scale)
    stats = _stats.channel_stats(moments, rho)
    invstd = (stats.var + eps).rsqrt()
    gain = invstd if weight is None else weight.to(invstd.dtype) * invstd
    shift = -stats.mean * gain
    if bias is not None:
        shift = shift + bias.to(shift.dtype)
    a = gain / rho.unsqueeze(1)
    return affine_output(x, a, shift), stats, moments, rho, active, invstd


class L2BatchNormFunction(torch.autograd.Function):
    """Training-mode L2BN with a hand-written backward. Returns ``(y, mean, var)``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        l2_eps: float,
        scale: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        y, stats, moments, rho, active, invstd = train_forward(x, weight, bias, eps, l2_eps, scale)
        ctx.save_for_backward(
            x, weight, rho, active, moments.mean, stats.row_mean, stats.row_var, stats.mean, invstd
        )
        ctx.scale = scale
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(stats.mean, stats.var)
        return y, stats.mean, stats.var

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, dy: Tensor, _dmean: Tensor, _dvar: Tensor
    ) -> tuple[Tensor | None, ...]:
        x, weight, rho, active, x_mean, m, v, mu, invstd = ctx.saved_tensors
        n, c = x.shape[0], x.shape[1]
        acc = invstd.dtype
        xa = x if x.dtype == acc else x.to(acc)
        dya = dy if dy.dtype == acc else dy.to(acc)
        x3 = xa.reshape(n, c, -1)
        dy3 = dya.reshape(n, c, -1)
        spatial = x3.shape[2]
        count = n * spatial

        t1 = dy3.sum(dim=2)
        # sum_s dy * (x - mean_row): the centred form keeps dgamma accurate under offsets.
        t2c = (dy3 * x3).sum(dim=2) - x_mean * t1
        inv_rho = rho.reciprocal().unsqueeze(1)
        dbeta = t1.sum(dim=0)
        dgamma = (invstd * (t2c * inv_rho + (m - mu) * t1)).sum(dim=0)

        gain = invstd if weight is None else weight.to(acc) * invstd
        dx = None
        if ctx.needs_input_grad[0]:
            # e[n] = sum_{c,s} xh * dxh, from per-row sums only.
            xh_dy = t2c * inv_rho + m * t1
            xh_z = invstd * spatial * (v + m * (m - mu))
            e = (gain * (xh_dy - (dbeta * spatial * m + dgamma * xh_z) / count)).sum(dim=1)
            proj = active.to(acc) * e
            if ctx.scale:
                proj = proj / (c * spatial)
            p = gain * inv_rho
            q = -inv_rho.square() * (gain * dgamma * invstd / count + proj.unsqueeze(1))
            r = gain * inv_rho * ((dgamma * invstd * mu - dbeta) / count)
            shape = _coeff_shape(x)
            dx = torch.addcmul(r.reshape(shape), dya, p.reshape(shape))
            dx.addcmul_(xa, q.reshape(shape))
            if dx.dtype != x.dtype:
                dx = dx.to(x.dtype)

        dweight = None
        if weight is not None and ctx.needs_input_grad[1]:
            dweight = dgamma.to(weight.dtype)
        dbias = None
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            dbias = dbeta.to(ctx.bias_dtype)
        return dx, dweight, dbias, None, None, None
