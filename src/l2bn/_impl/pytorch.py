"""The PyTorch backend: L2BN in PyTorch operations, one reduction and one output pass each way.

Forward (paper eqs. 2-3): ``y = a[n, c] * x + b[c]`` with
``a = gamma / (rho[n] * sqrt(var + eps))`` and ``b = beta - gamma * mu / sqrt(var + eps)``.

Backward: with ``T1 = sum_s dy`` and ``T2 = sum_s dy * x`` per ``(n, c)``, the input
gradient is ``dx = P[n, c] * dy + Q[n, c] * x + R[n, c]``, where P, Q, R are built from
``O(N * C)`` statistics (derived in ``input_grad``). Only ``x`` and those statistics are
saved for backward. The full-size passes are in ``passes`` (fast CPU paths and a generic
path); ``(N, C)`` input on the fast path uses ``vector_passes`` instead, where per-row
statistics would be as large as the input. It runs on every device and dtype.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from l2bn._impl import moments as _moments
from l2bn._impl import passes, vector_passes
from l2bn._impl.composite import differentiable_train_grads
from l2bn._impl.running import update_running_stats


def affine_output(x: Tensor, a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """``a[n, c] * x + b[c]`` in the accumulation dtype, returned in ``x``'s dtype.

    ``out``: optional fresh buffer shaped like ``x`` to write into (see ``_kernels``).
    """
    return passes.scale_shift(x, a, b, out)


def affine_coefficients(
    mean: Tensor,
    var: Tensor,
    rho: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``a[n, c]``, ``b[c]`` and ``1 / sqrt(var + eps)`` of ``y = a * x + b`` (eqs. 2-3).

    ``a = gamma / (rho[n] * sqrt(var + eps))``, ``b = beta - gamma * mean / sqrt(var + eps)``,
    in ``rho``'s (accumulation) dtype; ``mean`` and ``var`` are batch or running statistics.
    """
    acc = rho.dtype
    invstd = (var.to(acc) + eps).rsqrt()
    gain = invstd if weight is None else weight.to(acc) * invstd
    shift = -mean.to(acc) * gain
    if bias is not None:
        shift = shift + bias.to(acc)
    return gain / rho.unsqueeze(1), shift, invstd


def train_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, l2_eps: float, scale: bool
) -> tuple[Tensor, _moments.ChannelStats, _moments.RowMoments, Tensor, Tensor, Tensor]:
    """Training-mode forward; returns the output and what backward needs."""
    moments, buffer = _moments.input_moments(x)
    spatial = x.numel() // max(x.shape[0] * x.shape[1], 1)
    rho, active = _moments.sample_scale(moments, spatial, l2_eps, scale)
    stats = _moments.channel_stats(moments, rho)
    a, shift, invstd = affine_coefficients(stats.mean, stats.var, rho, weight, bias, eps)
    return affine_output(x, a, shift, buffer), stats, moments, rho, active, invstd


class GradRowSums(NamedTuple):
    """Per-``(n, c)`` sums of the backward, in the accumulation dtype."""

    dy: Tensor  # sum_s dy
    dy_xc: Tensor  # sum_s dy * (x - mu * rho): rho * sum_s dy * (xh - mu)
    buffer: Tensor | None  # a fresh tensor shaped like x, reusable for dx


def grad_row_sums(dy: Tensor, x: Tensor, mu: Tensor, rho: Tensor) -> GradRowSums:
    """One read of ``dy`` and ``x``, centred on the channel mean element by element, so that
    dgamma needs no difference of rounded row means (accuracy under large offsets)."""
    t1, t2, buffer = passes.grad_sums(dy, x, mu * rho.unsqueeze(1))
    return GradRowSums(t1, t2, buffer)


def channel_grad_sums(sums: GradRowSums, inv_rho: Tensor, invstd: Tensor) -> tuple[Tensor, Tensor]:
    """``dbeta = sum dy`` and ``dgamma = sum dy * z`` over the rows given (eq. 2)."""
    return sums.dy.sum(dim=0), invstd * (sums.dy_xc * inv_rho).sum(dim=0)


def input_grad(
    dy: Tensor,
    x: Tensor,
    sums: GradRowSums,
    m: Tensor,
    v: Tensor,
    mu: Tensor,
    invstd: Tensor,
    weight: Tensor | None,
    rho: Tensor,
    active: Tensor,
    dbeta: Tensor,
    dgamma: Tensor,
    count: int | Tensor,
    scale: bool,
) -> Tensor:
    """``dx = P * dy + Q * x + R`` through BN (eq. 2) and the l2 normalization (eq. 3):
    the coefficients of :func:`input_grad_coefficients`, then the full-size pass."""
    p, q, r = input_grad_coefficients(
        x, sums, m, v, mu, invstd, weight, rho, active, dbeta, dgamma, count, scale
    )
    return passes.grad_combine(dy, x, p, q, r, sums.buffer)


def input_grad_coefficients(
    x: Tensor,
    sums: GradRowSums,
    m: Tensor,
    v: Tensor,
    mu: Tensor,
    invstd: Tensor,
    weight: Tensor | None,
    rho: Tensor,
    active: Tensor,
    dbeta: Tensor,
    dgamma: Tensor,
    count: int | Tensor,
    scale: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(P, Q, R)``, each ``(N, C)`` in the statistics dtype, of ``dx = P * dy + Q * x + R``.

    ``dbeta``, ``dgamma`` and ``count`` are sums over the whole batch (all processes, for
    SyncL2BatchNorm); everything else is per row of this process (``x`` gives the shape
    only). ``m`` and ``v`` are the row mean and variance of ``xh``;
    ``e[n] = sum_{c,s} xh * dxh`` is the projection of the l2 normalization, zero for
    samples whose norm was clamped.
    """
    c = x.shape[1]
    spatial = x.numel() // max(x.shape[0] * c, 1)
    acc = invstd.dtype
    inv_rho = rho.reciprocal().unsqueeze(1)
    gain = invstd if weight is None else weight.to(acc) * invstd
    xh_dy = sums.dy_xc * inv_rho + mu * sums.dy  # sum_s xh * dy
    xh_z = invstd * spatial * (v + m * (m - mu))  # sum_s xh * z
    e = (gain * (xh_dy - (dbeta * spatial * m + dgamma * xh_z) / count)).sum(dim=1)
    proj = active.to(acc) * e
    if scale:
        proj = proj / (c * spatial)
    p = gain * inv_rho
    q = -inv_rho.square() * (gain * dgamma * invstd / count + proj.unsqueeze(1))
    r = gain * inv_rho * ((dgamma * invstd * mu - dbeta) / count)
    return p, q, r


class L2BatchNormFunction(torch.autograd.Function):
    """Training-mode L2BN with a hand-written backward. Returns ``(y, mean, var)``.

    A backward run with ``create_graph=True`` returns the differentiable gradient of the
    composite instead (:func:`l2bn._impl.composite.differentiable_train_grads`).
    """

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
        ctx.eps, ctx.l2_eps, ctx.scale = eps, l2_eps, scale
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.set_materialize_grads(False)  # no zero-filled gradients for mean and var
        ctx.vector = x.dim() == 2 and passes.fast_applies(x, weight, bias)
        if ctx.vector:
            # (N, C) input: BatchNorm's kernels on xh (see vector_passes); xh is
            # recomputed from x in backward.
            y, _xh, mean, var, invstd, rho, active = vector_passes.vector_forward(
                x, weight, bias, eps, l2_eps, scale
            )
            ctx.save_for_backward(x, weight, mean, invstd, rho, active)
            ctx.mark_non_differentiable(mean, var)
            return y, mean, var
        y, stats, moments, rho, active, invstd = train_forward(x, weight, bias, eps, l2_eps, scale)
        # x and O(N * C) statistics only; the row moments of xh are recomputed in backward.
        ctx.save_for_backward(x, weight, rho, active, moments.mean, moments.var, stats.mean, invstd)
        ctx.mark_non_differentiable(stats.mean, stats.var)
        return y, stats.mean, stats.var

    @staticmethod
    def backward(
        ctx: Any, dy: Tensor | None, _dmean: Tensor | None, _dvar: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        if dy is None:  # the output received no gradient (grads are not materialized)
            return None, None, None, None, None, None
        x, weight, *saved = ctx.saved_tensors
        needs = (
            ctx.needs_input_grad[0],
            weight is not None and ctx.needs_input_grad[1],
            ctx.bias_dtype is not None and ctx.needs_input_grad[2],
        )
        if torch.is_grad_enabled():
            grads = differentiable_train_grads(dy, x, weight, ctx.eps, ctx.l2_eps, ctx.scale, needs)
            return (*grads, None, None, None)
        if ctx.vector:
            mean, invstd, rho, active = saved
            xh = x / rho.unsqueeze(1)
            grads = vector_passes.vector_backward(
                dy, xh, weight, mean, invstd, rho, active, ctx.eps, ctx.scale, needs
            )
            return (*grads, None, None, None)
        rho, active, x_mean, x_var, mu, invstd = saved
        inv_rho = rho.reciprocal().unsqueeze(1)
        sums = grad_row_sums(dy, x, mu, rho)
        dbeta, dgamma = channel_grad_sums(sums, inv_rho, invstd)
        dx = None
        if needs[0]:
            m = x_mean * inv_rho  # row mean of xh, as in _moments.channel_stats
            v = x_var * inv_rho.square()  # row variance of xh
            count = x.numel() // x.shape[1]
            dx = input_grad(
                dy, x, sums, m, v, mu, invstd, weight, rho, active, dbeta, dgamma, count, ctx.scale
            )
        dweight = dgamma.to(weight.dtype) if needs[1] else None
        dbias = dbeta.to(ctx.bias_dtype) if needs[2] else None
        return dx, dweight, dbias, None, None, None


NAME = "pytorch"
DESCRIPTION = "PyTorch operations with a hand-written backward"
UNAVAILABLE_REASON = None


def applies(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    grad: bool,
) -> bool:
    """Every device, layout and floating dtype."""
    return True


def run(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    l2_eps: float,
    scale: bool,
    grad: bool,
) -> Tensor:
    """L2BN of checked arguments; updates the running statistics in training mode."""
    if not training:
        return eval_forward(x, running_mean, running_var, weight, bias, eps, l2_eps, scale)
    if grad:
        out, mean, var = L2BatchNormFunction.apply(x, weight, bias, eps, l2_eps, scale)
    else:
        out, stats, *_ = train_forward(x, weight, bias, eps, l2_eps, scale)
        mean, var = stats.mean, stats.var
    if running_mean is not None or running_var is not None:
        count = x.numel() // x.shape[1]
        update_running_stats(running_mean, running_var, mean, var, count, momentum)
    return out


def eval_forward(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    l2_eps: float,
    scale: bool,
) -> Tensor:
    """Eval mode: plain tensor ops, differentiable by autograd and traceable by export."""
    rho = _moments.sample_scale_direct(x, l2_eps, scale)
    a, shift, _ = affine_coefficients(running_mean, running_var, rho, weight, bias, eps)
    return affine_output(x, a, shift)
