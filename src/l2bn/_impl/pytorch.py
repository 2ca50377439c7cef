"""The PyTorch backend: L2BN in PyTorch operations, one reduction and one output pass each way.

Forward (paper eqs. 2-3): ``y = a[n, c] * x + b[c]`` with
``a = gamma / (rho[n] * sqrt(var + eps))`` and ``b = beta - gamma * mu / sqrt(var + eps)``.

Backward: with ``T1 = sum_s dy`` and ``T2 = sum_s dy * (x - mu * rho[n])`` per ``(n, c)``,
the input gradient is ``dx = P[n, c] * dy + Q[n, c] * x + R[n, c]``, where P, Q, R are
built from ``O(N * C)`` statistics (derived in :func:`_grad_coefficients`). Only ``x`` and those
statistics are saved for backward. The full-size passes are in ``passes`` (fast CPU paths
and a generic path); ``(N, C)`` input on the fast path uses ``vector_passes`` instead, where
per-row statistics would be as large as the input. It runs on every device and dtype.

On the generic path (every device but the CPU fast path, and ``torch.compile``) a call
dispatches no operator that reads a value back to the host and no full-size tensor in a
wider dtype than ``x``'s; its operator counts and bytes per element are in the README
("How the PyTorch backend computes") and checked by ``tests/test_core_operators.py``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from l2bn._impl import composite, passes, vector_passes
from l2bn._impl import moments as _moments
from l2bn._impl.composite import differentiable_train_grads
from l2bn._impl.running import update_from_batch
from l2bn._impl.sample_scale import norm_divisor
from l2bn._impl.transforms import compiling, exporting, functorch_wrapped


def affine_output(x: Tensor, a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """``a[n, c] * x + b[c]`` in the accumulation dtype, returned in ``x``'s dtype.

    ``out``: optional fresh buffer shaped like ``x`` to write into (see ``passes``).
    """
    return passes.scale_shift(x, a, b, out)


def _in_acc(t: Tensor, acc: torch.dtype) -> Tensor:
    """``t`` as an operand of an op computing in ``acc`` (float32 or float64): as it is when
    type promotion already gives ``acc`` (a half or float32 parameter), converted otherwise."""
    return t if t.dtype.itemsize <= acc.itemsize else t.to(acc)


def _gain_shift(
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    acc: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """``gain = gamma / sqrt(var + eps)``, ``b = beta - gain * mean`` and
    ``invstd = 1 / sqrt(var + eps)``, each ``(C,)`` in ``acc`` (eq. 2); ``mean`` and ``var``
    are batch or running statistics of any dtype."""
    invstd = var.to(acc).add(eps).rsqrt_()
    gain = invstd if weight is None else invstd * _in_acc(weight, acc)
    if bias is None:
        shift = torch.mul(_in_acc(mean, acc), gain).neg_()
    else:
        shift = torch.addcmul(_in_acc(bias, acc), _in_acc(mean, acc), gain, value=-1)
    return gain, shift, invstd


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
    gain, shift, invstd = _gain_shift(mean, var, weight, bias, eps, rho.dtype)
    return gain / rho.unsqueeze(1), shift, invstd


def _spatial(x: Tensor) -> int:
    """``M``: positions per ``(n, c)`` row of ``x`` of shape ``(N, C, *S)``."""
    return math.prod(x.shape[2:])


def train_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, l2_eps: float, scale: bool
) -> tuple[Tensor, _moments.BatchStats, Tensor, Tensor]:
    """Training-mode forward: the output ``y`` and what backward needs (the batch
    statistics, ``invstd`` and ``gain = gamma * invstd``, all ``O(N * C)``)."""
    moments, buffer = _moments.input_moments(x)
    stats = _moments.batch_stats(moments, _spatial(x), l2_eps, scale)
    gain, shift, invstd = _gain_shift(stats.mean, stats.var, weight, bias, eps, stats.var.dtype)
    a = gain * stats.inv_rho
    return affine_output(x, a, shift, buffer), stats, invstd, gain


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
    """``dx = P * dy + Q * x + R`` through BN (eq. 2) and the l2 normalization (eq. 3): the
    coefficients of :func:`input_grad_coefficients`, then the full-size pass."""
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
    only). ``m`` and ``v`` are the row mean and variance of ``xh`` (``(N, C)``), ``rho`` and
    ``active`` ``(N,)``; the formulas are in :func:`_grad_coefficients`.
    """
    gain = invstd if weight is None else invstd * _in_acc(weight, invstd.dtype)
    inv = rho.reciprocal().unsqueeze(1)
    centred = sums.dy_xc * inv
    return _grad_coefficients(
        x, sums.dy, centred, m, v, m - mu, mu, invstd, gain, inv, inv.square(),
        active.unsqueeze(1), dbeta, dgamma, count, scale,
    )  # fmt: skip


def _grad_coefficients(
    x: Tensor,
    t1: Tensor,
    centred: Tensor,
    m: Tensor,
    v: Tensor,
    dev: Tensor,
    mu: Tensor,
    invstd: Tensor,
    gain: Tensor,
    inv: Tensor,
    inv_sq: Tensor,
    active: Tensor,
    dbeta: Tensor,
    dgamma: Tensor,
    count: int | Tensor,
    scale: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``P, Q, R`` of ``dx = P * dy + Q * x + R`` from ``O(N * C)`` statistics.

    Per ``(n, c)``: ``t1 = sum_s dy``, ``centred = sum_s (xh - mu) * dy``; ``m``, ``v``: row
    mean and variance of ``xh``, ``dev = m - mu``; per channel ``gain = gamma * invstd``;
    ``inv = 1 / rho``, ``inv_sq = inv^2`` and ``active`` of shape ``(N, 1)``;
    ``K = count`` values per channel, ``M`` positions per row, ``D' = C * M`` (scaled form)
    or 1. BatchNorm's backward (eq. 2) gives ``dxh = gain * (dy - dbeta / K - z * dgamma / K)``
    with ``z = invstd * (xh - mu)``, and the l2 normalization (eq. 3)
    ``dx = (dxh - xh * e[n] / D') / rho[n]`` with ``e[n] = sum_{c,s} xh * dxh`` (0 where the
    norm was clamped, ``active`` false). With ``alpha = -gain * invstd * dgamma / K`` and
    ``beta = -gain * dbeta / K``:

    * ``e[n] = sum_c gain * (centred + mu * t1) + M * (beta * m + alpha * (v + m * dev))``
      (``sum_s xh * dy = centred + mu * t1``, ``sum_s xh * z = invstd * M * (v + m * dev)``);
    * ``P = gain / rho``, ``Q = (alpha - e / D') / rho^2``, ``R = (beta - alpha * mu) / rho``.
    """
    c, spatial = x.shape[1], _spatial(x)  # from the shape: N may be 0 (an empty rank)
    neg_gain_k = gain * (-1.0 / count)
    alpha = neg_gain_k * (dgamma * invstd)
    beta = neg_gain_k * dbeta
    e = torch.addcmul(centred, t1, mu).mul_(gain)
    e.addcmul_(m, beta, value=spatial)
    e.addcmul_(torch.addcmul(v, m, dev), alpha, value=spatial)
    proj = e.sum(dim=1, keepdim=True).mul_(active)
    q = torch.add(alpha, proj, alpha=-1.0 / (c * spatial) if scale else -1.0).mul_(inv_sq)
    p = gain * inv
    r = torch.addcmul(beta, alpha, mu, value=-1) * inv
    return p, q, r


class L2BatchNormFunction(torch.autograd.Function):
    """Training-mode L2BN with a hand-written backward. Returns ``(y, mean, var)``.

    A backward run with ``create_graph=True``, or given a ``torch.func`` gradient (the
    batched ``dy`` of ``is_grads_batched=True`` and ``jacobian(vectorize=True)``), returns
    the differentiable gradient of the composite instead
    (:func:`l2bn._impl.composite.differentiable_train_grads`). ``torch.export`` does not
    record this function (see :func:`run`).
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
        y, stats, invstd, gain = train_forward(x, weight, bias, eps, l2_eps, scale)
        # x and O(N * C) statistics only.
        ctx.save_for_backward(
            x, weight, stats.inv_rho, stats.inv_rho_sq, stats.row_mean, stats.row_var,
            stats.dev, stats.mean, invstd, gain,
        )  # fmt: skip
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
        if torch.is_grad_enabled() or (not compiling() and functorch_wrapped(dy)):
            # create_graph=True, or a batched dy (is_grads_batched, which vmaps this
            # backward: the passes below write into plain buffers in place). Under
            # torch.compile, whose traced gradients are never batched here, the check is
            # skipped: Dynamo cannot trace it, and its graph break would run the whole
            # layer eagerly.
            grads = differentiable_train_grads(dy, x, weight, ctx.eps, ctx.l2_eps, ctx.scale, needs)
            return (*grads, None, None, None)
        if ctx.vector:
            mean, invstd, rho, active = saved
            xh = x / rho.unsqueeze(1)
            grads = vector_passes.vector_backward(
                dy, xh, weight, mean, invstd, rho, active, ctx.eps, ctx.scale, needs
            )
            return (*grads, None, None, None)
        inv, inv_sq, m, v, dev, mu, invstd, gain = saved  # inv, inv_sq: (N, 1)
        t1, t2, buffer = passes.grad_sums(dy, x, mu / inv)  # centred on mu * rho[n]
        centred = t2 * inv  # sum_s (xh - mu) * dy
        dbeta = t1.sum(dim=0)
        dgamma = centred.sum(dim=0).mul_(invstd)
        dx = None
        if needs[0]:
            spatial = _spatial(x)
            limit = _moments.inverse_scale_limit(spatial * x.shape[1], ctx.l2_eps, ctx.scale)
            active = inv < limit  # (N, 1): the norm was not clamped by l2_eps
            p, q, r = _grad_coefficients(
                x, t1, centred, m, v, dev, mu, invstd, gain, inv, inv_sq, active, dbeta,
                dgamma, x.shape[0] * spatial, ctx.scale,
            )  # fmt: skip
            dx = passes.grad_combine(dy, x, p, q, r, buffer)
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
    if exporting():
        # torch.export would inline L2BatchNormFunction's forward (in-place steps included)
        # and drop its backward: the program records the composite, which autograd
        # differentiates (also when traced under no_grad: the program may be trained later).
        return composite.l2_batch_norm(
            x, running_mean, running_var, weight, bias, True, momentum, eps, l2_eps, scale
        )
    if grad:
        out, mean, var = L2BatchNormFunction.apply(x, weight, bias, eps, l2_eps, scale)
    else:
        out, stats, _, _ = train_forward(x, weight, bias, eps, l2_eps, scale)
        mean, var = stats.mean, stats.var
    update_from_batch(running_mean, running_var, mean, var, x, momentum)
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
    """Eval mode: plain tensor ops, differentiable by autograd and traceable by export.

    ``||x_n||`` from one norm reduction of ``x`` (float32/float64 accumulation, no converted
    copy), then ``y = sqrt(D) * (gain[c] / max(||x_n||, l2_eps)) * x + b[c]`` with the
    running statistics (eq. 3 with ``rho = max(||x_n||, l2_eps) / sqrt(D)``, the factor
    ``sqrt(D)`` of the scaled form riding on the output pass): one output pass.
    """
    acc = _moments.accumulation_dtype(x)
    norm = torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())), dtype=acc)
    gain, shift, _ = _gain_shift(running_mean, running_var, weight, bias, eps, acc)
    a = gain / norm.clamp(min=l2_eps).unsqueeze(1)
    return passes.scale_shift(x, a, shift, value=norm_divisor(math.prod(x.shape[1:]), scale))
