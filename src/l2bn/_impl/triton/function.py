"""Autograd around the Triton operators, and the backend's ``run``.

The training forward mutates the running statistics, so its operator cannot carry an
autograd formula; :class:`TritonL2BatchNormFunction` saves ``x`` and the ``O(N * C)``
statistics and calls the backward operator, or, for a backward run with
``create_graph=True``, the differentiable composite
(:func:`l2bn._impl.composite.differentiable_train_grads`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from l2bn._impl.operator_backward import train_grads
from l2bn._impl.triton import ops  # registers torch.ops.l2bn_triton.*

_train_forward = torch.ops.l2bn_triton.train_forward.default
_train_backward = torch.ops.l2bn_triton.train_backward.default
_eval_forward = torch.ops.l2bn_triton.eval_forward.default

__all__ = ["TritonL2BatchNormFunction", "ops", "run"]


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
    """Training (with autograd when ``grad``) or eval L2BN on the Triton operators."""
    if training:
        args = (x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale)
        if grad:
            return TritonL2BatchNormFunction.apply(*args)[0]
        return _train_forward(*args)[0]
    return _eval_forward(x, running_mean, running_var, weight, bias, eps, l2_eps, scale)


class TritonL2BatchNormFunction(torch.autograd.Function):
    """Training-mode L2BN on the Triton operators; saves ``x`` and ``O(N * C)`` float32
    statistics (``rho``, activity, row moments of ``x``, channel mean and invstd)."""

    @staticmethod
    def forward(
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        momentum: float,
        eps: float,
        l2_eps: float,
        scale: bool,
    ) -> tuple[Tensor, ...]:
        return _train_forward(
            x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, weight, bias, _rm, _rv, _momentum, eps, l2_eps, scale = inputs
        ctx.save_for_backward(x, weight, *output[1:])
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)  # no zero-filled gradients of the statistics
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.eps, ctx.l2_eps, ctx.scale = eps, l2_eps, scale

    @staticmethod
    def backward(ctx: Any, dy: Tensor, *_stats: Tensor) -> tuple[Tensor | None, ...]:
        if dy is None:  # the output was not used: no gradient flows
            return (None,) * 9
        return (*train_grads(ctx, dy, _train_backward), None, None, None, None, None, None)
