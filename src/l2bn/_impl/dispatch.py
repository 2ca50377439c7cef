"""The one place that decides which backend runs an L2BN call.

Backends, in the order they are tried (:mod:`l2bn.backends` switches them):

* ``composite`` whenever a PyTorch transform records the call (``transforms``); otherwise
* ``cpu``: the fused C++ operators, for CPU float32/float64 tensors;
* ``pytorch``: PyTorch operations with a hand-written backward; every device and dtype.

Each backend module exposes ``NAME``, ``DESCRIPTION``, ``UNAVAILABLE_REASON`` (None when
usable), ``applies(x, running_mean, running_var, weight, bias, training, grad)`` (a plain
predicate on the call) and ``run(...)`` (the call, running statistics updated in place).
A backend whose gradient cannot be differentiated again routes a ``create_graph=True``
backward to the composite, so every backend gives correct higher-order gradients.

``SyncL2BatchNorm`` across processes asks :func:`sync_backend` whose full-size passes run
around its collectives: the Triton kernels where :func:`choose` would pick them, else the
PyTorch passes.
"""

from __future__ import annotations

import math
from types import ModuleType

import torch
from torch import Tensor

from l2bn._impl import composite, cpu, pytorch, switches
from l2bn._impl import triton as triton_backend
from l2bn._impl.transforms import composite_required


class _CompositeBackend:
    """The composite as a backend (chosen for transforms, or by request)."""

    NAME = "composite"
    DESCRIPTION = "composite of differentiable torch operations (F.normalize-style + F.batch_norm)"
    UNAVAILABLE_REASON = None

    @staticmethod
    def applies(*_args: object) -> bool:
        return True

    @staticmethod
    def run(
        x, running_mean, running_var, weight, bias, training, momentum, eps, l2_eps, scale, grad
    ):
        return composite.l2_batch_norm(
            x, running_mean, running_var, weight, bias, training, momentum, eps, l2_eps, scale
        )


BACKENDS: dict[str, ModuleType | type] = {
    "triton": triton_backend,
    "cpu": cpu,
    "pytorch": pytorch,
    "composite": _CompositeBackend,
}
ORDER: tuple[str, ...] = ("triton", "cpu", "pytorch")
_ORDERED = tuple((name, BACKENDS[name]) for name in ORDER)  # choose() runs on every call

STATE = switches.STATE
STATE["enabled"] = {name: True for name in BACKENDS}


def choose(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    grad: bool,
):
    """The backend module that runs this call (the first usable one that applies)."""
    if composite_required():
        return _CompositeBackend
    preferred = STATE["preferred"]
    if preferred is not None:
        backend = BACKENDS[preferred]
        if backend.UNAVAILABLE_REASON is None and backend.applies(
            x, running_mean, running_var, weight, bias, training, grad
        ):
            return backend
        if STATE["strict"]:
            why = backend.UNAVAILABLE_REASON or (
                f"it does not take {x.device.type} {x.dtype} input "
                f"({'training' if training else 'eval'}, grad={grad})"
            )
            raise RuntimeError(f"l2bn: backend {preferred!r} is required, but {why}")
    enabled = STATE["enabled"]
    for name, backend in _ORDERED:
        if (
            enabled[name]
            and backend.UNAVAILABLE_REASON is None
            and backend.applies(x, running_mean, running_var, weight, bias, training, grad)
        ):
            return backend
    return _CompositeBackend


def records_grad(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> bool:
    """Whether autograd records this call: grad mode on and a differentiable argument."""
    return torch.is_grad_enabled() and (
        x.requires_grad
        or (weight is not None and weight.requires_grad)
        or (bias is not None and bias.requires_grad)
    )


def sync_backend(x: Tensor, weight: Tensor | None, bias: Tensor | None, grad: bool) -> ModuleType:
    """The backend whose full-size passes run a training call of ``SyncL2BatchNorm``
    across processes (``l2bn._impl.sync_function``): the Triton backend where
    :func:`choose` picks it for a training call on ``x``, else the PyTorch backend, whose
    passes serve every device and dtype (the fused CPU operators and the composite have no
    synchronized form; a strict preference for them is not honoured there).

    ``x`` may hold no sample (``(0, C, *S)``): a process with an empty share decides as
    its peers do from its device and dtype (on a one-sample stand-in), since the processes'
    statistics meet in one collective and must share a dtype. Raises ``RuntimeError``
    where :func:`choose` does (a strict preference that cannot run the call).
    """
    if x.shape[0] == 0 and math.prod(x.shape[1:]) > 0:
        x = x.new_empty((1, 1, 2))
    backend = choose(x, None, None, weight, bias, True, grad)
    return triton_backend if backend is triton_backend else pytorch


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
    """L2BN of checked, non-empty arguments on the chosen backend."""
    grad = records_grad(x, weight, bias)
    backend = choose(x, running_mean, running_var, weight, bias, training, grad)
    return backend.run(
        x, running_mean, running_var, weight, bias, training, momentum, eps, l2_eps, scale, grad
    )
