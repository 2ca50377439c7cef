"""The fused CPU kernels of ``l2bn._C`` (issue 3): whether they are there, when they apply,
and the autograd function around them.

``l2bn._C`` is a C++ extension built by the project's install step (``make setup``; see
setup.py). It registers ``torch.ops.l2bn.train_forward``, ``train_backward`` and
``eval_forward``: each one reduction pass and one output pass over the input, with every
``O(N * C)`` step (statistics, coefficients, running-statistics update) in C++ as well.
When the extension is missing (an install without a compiler, or a torch it was not built
against) or for input it does not take (other devices, half precision, ``torch.compile``
and ``torch.export``), L2BN runs the pure-PyTorch path of ``_autograd`` / ``_kernels``,
which gives the same results up to rounding. ``L2BN_DISABLE_FUSED=1`` in the environment
switches the extension off.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from l2bn import _kernels


def _load() -> str | None:
    """None when the operators are registered, else why not."""
    if os.environ.get("L2BN_DISABLE_FUSED", "") not in ("", "0"):
        return "switched off by L2BN_DISABLE_FUSED"
    if importlib.util.find_spec("l2bn._C") is None:
        return "l2bn._C was not built (README: Set-up)"
    try:
        from l2bn import _C  # noqa: F401  (registers torch.ops.l2bn.*)
    except (ImportError, OSError) as exc:
        return f"l2bn._C could not be loaded ({exc})"
    return None


_UNAVAILABLE_REASON = _load()
_state = {"enabled": _UNAVAILABLE_REASON is None}
if _UNAVAILABLE_REASON is None:
    # The overloads themselves: calling them skips the packet's overload resolution.
    _train_forward = torch.ops.l2bn.train_forward.default
    _train_backward = torch.ops.l2bn.train_backward.default
    _eval_forward = torch.ops.l2bn.eval_forward.default
_FULL_PRECISION = (torch.float32, torch.float64)


def available() -> bool:
    """True when the fused CPU kernels were built and loaded."""
    return _UNAVAILABLE_REASON is None


def status() -> str:
    """Which implementation L2BN runs on CPU, and why."""
    if _UNAVAILABLE_REASON is None:
        return "fused C++ kernels (l2bn._C)"
    return f"pure PyTorch ({_UNAVAILABLE_REASON})"


@contextlib.contextmanager
def fused_kernels(enabled: bool) -> Iterator[None]:
    """Use (or not) the fused kernels inside a ``with`` block; tests compare the paths."""
    previous = _state["enabled"]
    _state["enabled"] = bool(enabled) and available()
    try:
        yield
    finally:
        _state["enabled"] = previous


def forward(
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
) -> Tensor | None:
    """L2BN of checked arguments on the fused kernels, or None where they do not apply.

    Training mode updates the running statistics in place. Eval mode with a gradient
    required returns None: the pure-PyTorch eval path is differentiable, the kernel is not.
    Written flat (few calls, no generators): it runs once per layer and step.
    """
    if not (_state["enabled"] and x.is_cpu and x.dtype in _FULL_PRECISION and x.numel()):
        return None
    for t in (running_mean, running_var, weight, bias):
        if t is not None and not t.is_cpu:
            return None
    if not _kernels.fast_paths_enabled() or _kernels.tracing():
        return None
    grad = torch.is_grad_enabled() and (
        x.requires_grad
        or (weight is not None and weight.requires_grad)
        or (bias is not None and bias.requires_grad)
    )
    if training:
        args = (x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale)
        if grad:
            return FusedL2BatchNormFunction.apply(*args)
        return _train_forward(*args)[0]
    if grad or running_mean.requires_grad or running_var.requires_grad:
        return None
    return _eval_forward(x, running_mean, running_var, weight, bias, eps, l2_eps, scale)


class FusedL2BatchNormFunction(torch.autograd.Function):
    """Training-mode L2BN on the fused operators. Saves ``x`` and ``O(N * C)`` statistics."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        momentum: float,
        eps: float,
        l2_eps: float,
        scale: bool,
    ) -> Tensor:
        y, *stats = _train_forward(
            x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale
        )
        # stats: rho, active, row mean and variance of x (None for (N, C)), mean, invstd.
        ctx.save_for_backward(x, weight, *stats)
        ctx.scale = scale
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, *stats = ctx.saved_tensors
        dx, dweight, dbias = _train_backward(
            dy, x, weight, *stats, ctx.scale, ctx.needs_input_grad[0]
        )
        if weight is None or not ctx.needs_input_grad[1]:
            dweight = None
        if ctx.bias_dtype is None or not ctx.needs_input_grad[2]:
            dbias = None
        elif dbias.dtype != ctx.bias_dtype:
            dbias = dbias.to(ctx.bias_dtype)
        return dx, dweight, dbias, None, None, None, None, None, None
