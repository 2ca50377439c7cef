"""L2BN as a composite of differentiable torch operations (paper eqs. 1-3).

``xh = x / rho[n]`` with ``rho[n] = max(||x[n]||, l2_eps) / sqrt(D)`` (``scale=True``) or
``max(||x[n]||, l2_eps)``, then :func:`torch.nn.functional.batch_norm` on ``xh``. It has no
data-dependent branch and no host synchronization, so every PyTorch transform handles it
as it handles BatchNorm: ``torch.func`` (``grad``, ``vmap``, ``jvp``), forward-mode AD,
``torch.jit.trace``, both ONNX exporters, and any order of ``torch.autograd.grad``. The
backends with hand-written backward passes use :func:`differentiable_train_grads` when
their gradient must itself be differentiated (``create_graph=True``).

Statistics of float16/bfloat16 input are computed in float32, as BatchNorm does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from l2bn._impl.running import update_from_batch
from l2bn._impl.sample_scale import sample_scale
from l2bn._impl.transforms import exporting


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# Samples whose largest magnitude passes this are first brought to [1, 2) (below).
_LARGE = 2.0**40


def _tamed(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``x`` with each sample whose largest finite magnitude passes 2^40 multiplied by a
    power of two that brings it to ``[1, 2)`` (exact).

    In float32, bfloat16 or float16 the squares of values past about 1e19 overflow (the norm
    became inf and the sample's output 0), and the division's backward squares ``rho``.
    L2BN ignores a sample's scale (eq. 3; the clamp at ``l2_eps`` cannot bind at such
    norms), and the factor is a constant of the graph (computed from detached ``x``), so the
    output and every derivative are the same as without it. Not for float64 input, whose
    range makes it unneeded.
    """
    if x.dtype == torch.float64:
        return x
    peak = x.detach().abs().amax(dim=dims, keepdim=True)
    large = torch.isfinite(peak) & (peak > _LARGE)  # NaN and inf samples keep their values
    factor = torch.where(large, torch.pow(2.0, -torch.floor(torch.log2(peak))), 1.0)
    return x * factor


def normalize_samples(x: Tensor, l2_eps: float, scale: bool) -> Tensor:
    """``xh`` of eq. (3) in the accumulation dtype: each sample divided by ``rho[n]``."""
    acc = _accumulation_dtype(x.dtype)
    dims = tuple(range(1, x.dim()))
    x = _tamed(x, dims)
    norm = torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=acc)
    rho = sample_scale(norm, math.prod(x.shape[1:]), l2_eps, scale)
    return x.to(acc) / rho


def l2_batch_norm(
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
) -> Tensor:
    """L2BN of checked arguments; updates the running statistics in training mode.

    Running statistics of another dtype than the accumulation dtype (a bfloat16 model's
    buffers) are updated in the accumulation dtype and copied back, rounded once.

    Running statistics that require grad get the gradient of eval mode, as on the other
    backends (``F.batch_norm`` would refuse them): eval mode then applies them in plain
    operations; training mode updates them in place outside the graph (the output does
    not depend on them).
    """
    xh = normalize_samples(x, l2_eps, scale)
    acc = xh.dtype
    if running_mean is not None and (running_mean.requires_grad or running_var.requires_grad):
        if not training:
            return _eval_with_differentiable_stats(
                x, xh, running_mean, running_var, weight, bias, eps
            )
        running_mean, running_var = running_mean.detach(), running_var.detach()
    if training and running_mean is not None and exporting():
        return _exported_training(x, xh, running_mean, running_var, weight, bias, momentum, eps)
    mean, var = _in_dtype(running_mean, acc), _in_dtype(running_var, acc)
    y = _batch_norm(xh, mean, var, weight, bias, training, momentum, eps)
    if training:
        for buffer, updated in ((running_mean, mean), (running_var, var)):
            if updated is not buffer:
                buffer.copy_(updated)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def _batch_norm(
    xh: Tensor,
    mean: Tensor | None,
    var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """``F.batch_norm`` of ``xh`` (eq. 2) with the affine parameters in its dtype."""
    acc = xh.dtype
    weight = None if weight is None else weight.to(acc)
    bias = None if bias is None else bias.to(acc)
    return F.batch_norm(xh, mean, var, weight, bias, training, momentum, eps)


def _exported_training(
    x: Tensor,
    xh: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float,
    eps: float,
) -> Tensor:
    """Training-mode BN of ``xh`` as ``torch.export`` records it: the output from the batch
    statistics alone, then the running statistics updated by plain operations outside the
    graph. ``F.batch_norm`` with the running statistics would write them back in place
    inside its operator, which a decomposed program (``run_decompositions()``) then saves
    and bumps (torch 2.13: its backward fails; compiled, gradients went missing)."""
    y = _batch_norm(xh, None, None, weight, bias, True, momentum, eps)
    with torch.no_grad():
        var, mean = torch.var_mean(xh.detach(), dim=(0, *range(2, xh.dim())), correction=0)
        update_from_batch(running_mean, running_var, mean, var, xh, momentum)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def _eval_with_differentiable_stats(
    x: Tensor,
    xh: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """Eval-mode BN of ``xh`` (eq. 2) differentiable in the running statistics too."""
    acc = xh.dtype
    shape = (1, -1) + (1,) * (xh.dim() - 2)
    y = (xh - running_mean.to(acc).view(shape)) * (running_var.to(acc) + eps).rsqrt().view(shape)
    if weight is not None:
        y = y * weight.to(acc).view(shape)
    if bias is not None:
        y = y + bias.to(acc).view(shape)
    return y.to(x.dtype)


def _in_dtype(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """``t`` (a running statistic, or None) as it is, or a copy in ``dtype``."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def differentiable_train_grads(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    eps: float,
    l2_eps: float,
    scale: bool,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(dx, dweight, dbias)`` of training-mode L2BN as a differentiable graph.

    For backward passes run with ``create_graph=True`` (gradient penalties, ``gradgradcheck``):
    the forward is recomputed as the composite and differentiated by autograd, so the
    gradient is itself differentiable in ``dy``, ``x`` and ``weight``. ``needs`` says which
    of the three are wanted (the bias gradient is ``dy`` summed over all but dim 1).
    """
    dx = dweight = dbias = None
    if needs[2]:
        dbias = dy.sum(dim=(0, *range(2, dy.dim())))
    targets = []
    with torch.enable_grad():
        xs = x if x.requires_grad else x.detach().requires_grad_(needs[0])
        ws = weight
        if weight is not None and not weight.requires_grad:
            ws = weight.detach().requires_grad_(needs[1])
        if needs[0]:
            targets.append(xs)
        if needs[1] and ws is not None:
            targets.append(ws)
        if not targets:
            return dx, dweight, dbias
        y = l2_batch_norm(xs, None, None, ws, None, True, 0.0, eps, l2_eps, scale)
        found = list(torch.autograd.grad(y, targets, dy, create_graph=True, allow_unused=True))
    if needs[0]:
        dx = found.pop(0)
        dx = torch.zeros_like(x) if dx is None else dx
    if needs[1] and ws is not None:
        dweight = found.pop(0)
        dweight = torch.zeros_like(weight) if dweight is None else dweight
    if dbias is not None and weight is not None:
        dbias = dbias.to(weight.dtype)
    return dx, dweight, dbias
