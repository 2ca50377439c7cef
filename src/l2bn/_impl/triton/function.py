"""Autograd around the Triton operators, and the backend's ``run``.

The training forward mutates the running statistics, so its operator cannot carry an
autograd formula; :class:`TritonL2BatchNormFunction` saves ``x`` and the ``O(N * C)``
statistics and calls the backward operator, or, for a backward run with
``create_graph=True``, the differentiable composite
(:func:`l2bn._impl.composite.differentiable_train_grads`).

``torch.export`` inlines a Python autograd function's forward and drops its backward, so
a training call traced there records ``l2bn_triton::train`` instead: the same kernels
without the mutation, with the same backward registered as its autograd formula here
(:func:`torch.library.register_autograd`); the running statistics are then updated by
:func:`l2bn._impl.running.update_running_stats` from the batch statistics it returns,
which the exported program records as a mutation of the module's buffers.

In eager mode, on plain tensors and with no dispatch or torch-function mode active, the
calls run the operators' Python bodies directly (:func:`_direct`) instead of going through
the dispatcher: an operator call passes through its autograd, ADInplaceOrView and device
kernels, each a Python function, before the body runs, which cost about as much host time
as the launches themselves on the H200 machine (README, "Host time"). The same launches run,
and a training forward bumps the running statistics' version counters as the operator
does; under the profiler a direct call is a range named as the operator. Compiling,
exporting, a ``TorchDispatchMode`` or ``TorchFunctionMode`` (the launch-counting tests',
``FlopCounterMode``, ``torch.set_default_device``), tensor subclasses and batched or
functorch-wrapped tensors get the operators.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

from l2bn._impl.operator_backward import (
    register_train_autograd,
    save_for_backward,
    train_grads,
)
from l2bn._impl.running import update_from_batch
from l2bn._impl.transforms import compiling, exporting, functorch_wrapped
from l2bn._impl.triton import ops  # registers torch.ops.l2bn_triton.*

_train = torch.ops.l2bn_triton.train.default
_train_forward = torch.ops.l2bn_triton.train_forward.default
_train_backward = torch.ops.l2bn_triton.train_backward.default
_eval_forward = torch.ops.l2bn_triton.eval_forward.default

__all__ = ["TritonL2BatchNormFunction", "ops", "run"]

_PLAIN = (Tensor, torch.nn.Parameter)


def _direct(*tensors: Tensor | None) -> bool:
    """Whether a call on ``tensors`` may run an operator's Python body directly: eager
    (not compiling or exporting), no ``TorchDispatchMode`` or ``TorchFunctionMode`` active
    (they expect to see the operators; ``torch.set_default_device`` pushes one too, so
    under it the operators run), plain tensors or parameters only (a subclass gets the
    operator, which dispatches to it), none of them batched or wrapped by a functorch
    transform (a batched gradient of ``is_grads_batched=True`` or ``vmap``, which the
    dispatcher's batching rule runs once a vector and the kernels cannot read)."""
    if (
        compiling()
        or torch._C._len_torch_dispatch_stack()
        or torch._C._is_torch_function_mode_enabled()
    ):
        return False
    return all(t is None or (type(t) in _PLAIN and not functorch_wrapped(t)) for t in tensors)


def _call(op, body, name: str, tensors: tuple, args: tuple, mutated: tuple = ()) -> Any:
    """``op(*args)``, or, where :func:`_direct` allows it for ``tensors``, the operator's
    body ``body(*args, True)`` with direct launches; then the version counters of the
    ``mutated`` tensors (those not None) move, as the operator's ADInplaceOrView kernel
    moves them. Under the profiler the direct call is a range named ``name``, as the
    operator's would be (only then: a range costs host time)."""
    if not _direct(*tensors):
        return op(*args)
    profiled = torch.autograd._profiler_enabled()
    with (
        torch.autograd.profiler.record_function(name) if profiled else contextlib.nullcontext(),
        ops.direct_launches(),
    ):
        out = body(*args, True)
    for t in mutated:
        if t is not None:
            torch.autograd.graph.increment_version(t)
    return out


def _forward(
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
    """``l2bn_triton::train_forward`` (:func:`_call`), which updates the running
    statistics."""
    args = (x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale)
    stats = (running_mean, running_var)
    return _call(
        _train_forward, ops._train_forward, "l2bn_triton::train_forward", args[:5], args, stats
    )


def _backward(dy: Tensor, x: Tensor, weight: Tensor | None, *rest: Any) -> tuple[Tensor, ...]:
    """``l2bn_triton::train_backward`` (:func:`_call`)."""
    args = (dy, x, weight, *rest)
    return _call(
        _train_backward, ops._train_backward, "l2bn_triton::train_backward", args[:3], args
    )


def _eval(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    l2_eps: float,
    scale: bool,
) -> Tensor:
    """``l2bn_triton::eval_forward`` (:func:`_call`)."""
    args = (x, running_mean, running_var, weight, bias, eps, l2_eps, scale)
    return _call(_eval_forward, ops._eval_forward, "l2bn_triton::eval_forward", args[:5], args)


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
        if exporting():
            # Also when traced under no_grad: the program may be trained later.
            return _exported_train(
                x, running_mean, running_var, weight, bias, momentum, eps, l2_eps, scale
            )
        # Running statistics that require grad are updated outside the graph, as on every
        # backend: detached, so that neither the in-place update nor the operator's output
        # is recorded by autograd.
        if running_mean is not None and running_mean.requires_grad:
            running_mean = running_mean.detach()
        if running_var is not None and running_var.requires_grad:
            running_var = running_var.detach()
        args = (x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale)
        if grad:
            return TritonL2BatchNormFunction.apply(*args)[0]
        return _forward(*args)[0]
    return _eval(x, running_mean, running_var, weight, bias, eps, l2_eps, scale)


def _exported_train(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float,
    eps: float,
    l2_eps: float,
    scale: bool,
) -> Tensor:
    """Training L2BN as ``torch.export`` records it: ``l2bn_triton::train`` (autograd
    through :func:`l2bn._impl.operator_backward.register_train_autograd`), then the
    running-statistics update."""
    y, *_saved, mean, _invstd, var = _train(x, weight, bias, eps, l2_eps, scale)
    update_from_batch(running_mean, running_var, mean, var, x, momentum)
    return y


register_train_autograd("l2bn_triton::train", _backward)


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
        return _forward(x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, weight, bias, _rm, _rv, _momentum, eps, l2_eps, scale = inputs
        save_for_backward(ctx, x, weight, bias, output[1:], eps, l2_eps, scale)
        ctx.mark_non_differentiable(*output[1:])

    @staticmethod
    def backward(ctx: Any, dy: Tensor, *_stats: Tensor) -> tuple[Tensor | None, ...]:
        if dy is None:  # the output was not used: no gradient flows
            return (None,) * 9
        return (*train_grads(ctx, dy, _backward), None, None, None, None, None, None)
