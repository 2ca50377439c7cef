"""The backward of a training-operator pair (the fused CPU operators, the Triton ones).

Both backends save ``x``, the weight and their ``O(N * C)`` statistics in forward and run
a backward operator ``train_backward(dy, x, weight, *stats, scale, input_grad) -> (dx,
dweight, dbias)``; what surrounds that call is the same for both and written here once.
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
