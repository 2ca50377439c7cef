"""The backward of a training-operator pair (the fused CPU operators, the Triton ones).

Both backends save ``x``, the weight and their ``O(N * C)`` statistics in forward and run
a backward operator ``train_backward(dy, x, weight, *stats, scale, input_grad) -> (dx,
dweight, dbias)``; what surrounds that call is the same for both and written here once,
and so is the autograd formula of their functional training operators
(:func:`register_train_autograd`: ``l2bn::train_stats``, ``l2bn_triton::train``), which
exported training programs record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from l2bn._impl.composite import differentiable_train_grads


def train_grads(
    ctx: Any, dy: Tensor, train_backward: Callable[..., tuple[Tensor, Tensor, Tensor]]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(dx, dweight, dbias)`` for an autograd function whose first three inputs are
    ``x``, ``weight``, ``bias`` and whose context holds ``saved_tensors = (x, weight,
    *stats)``, ``scale``, ``eps``, ``l2_eps`` and ``bias_dtype`` (None without a bias).

    A backward run with ``create_graph=True`` gets the differentiable gradient of the
    composite (:func:`l2bn._impl.composite.differentiable_train_grads`), so that second
    derivatives are exact; otherwise the backward operator runs. Gradients not asked for
    are None; ``dbias`` comes in the bias's dtype.
    """
    x, weight, *stats = ctx.saved_tensors
    needs = ctx.needs_input_grad[:3]
    if torch.is_grad_enabled():
        return differentiable_train_grads(dy, x, weight, ctx.eps, ctx.l2_eps, ctx.scale, needs)
    dx, dweight, dbias = train_backward(dy, x, weight, *stats, ctx.scale, needs[0])
    if not needs[0]:
        dx = None
    if weight is None or not needs[1]:
        dweight = None
    if ctx.bias_dtype is None or not needs[2]:
        dbias = None
    elif dbias.dtype != ctx.bias_dtype:
        dbias = dbias.to(ctx.bias_dtype)
    return dx, dweight, dbias


def save_for_backward(
    ctx: Any,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    stats: tuple,
    eps: float,
    l2_eps: float,
    scale: bool,
) -> None:
    """What the training autograd formulas keep: ``x``, the weight and the ``O(N * C)``
    statistics (non-differentiable outputs), as :func:`train_grads` reads them."""
    ctx.save_for_backward(x, weight, *stats)
    ctx.set_materialize_grads(False)  # no zero-filled gradients of the statistics
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.eps, ctx.l2_eps, ctx.scale = eps, l2_eps, scale


def register_train_autograd(
    name: str, train_backward: Callable[..., tuple[Tensor, Tensor, Tensor]]
) -> None:
    """Register the autograd formula of the functional training operator ``name``:
    ``(x, weight?, bias?, eps, l2_eps, scale) -> (y, rho, active, row_mean, row_var, mean,
    invstd, var)``, differentiable in ``y`` alone, whose gradient :func:`train_grads`
    computes with ``train_backward`` (the differentiable composite under
    ``create_graph=True``)."""

    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, weight, bias, eps, l2_eps, scale = inputs
        save_for_backward(ctx, x, weight, bias, output[1:7], eps, l2_eps, scale)
        ctx.mark_non_differentiable(*output[1:])

    def backward(ctx: Any, dy: Tensor, *_stats: Tensor) -> tuple[Tensor | None, ...]:
        if dy is None:  # the output was not used: no gradient flows
            return (None,) * 6
        return (*train_grads(ctx, dy, train_backward), None, None, None)

    torch.library.register_autograd(name, backward, setup_context=setup_context)
