"""Whether a PyTorch transform records the current call, and which code it needs.

* ``composite_required()``: ``torch.func`` transforms (``grad``, ``vmap``, ``jvp``),
  forward-mode AD, ``torch.jit.trace`` and the ONNX exporters trace or transform plain
  tensor operations; they get the differentiable composite (``composite``), which each of
  them supports as it supports BatchNorm.
* ``compiling()``: ``torch.compile`` and ``torch.export`` keep the registered fused
  operators, but the PyTorch backend must take data-independent code paths.
* ``exporting()``: ``torch.export`` in particular. It inlines the forward of a Python
  ``torch.autograd.Function`` and drops its backward, so a call traced there must record
  operators that carry their own autograd formula.
* ``functorch_wrapped(t)``: a backward that receives such a gradient (``is_grads_batched``,
  ``jacobian(vectorize=True)``: the backward runs under ``vmap``) must not write into
  plain buffers in place.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor

_functorch_active = torch._C._are_functorch_transforms_active
_is_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_is_legacy_batched = torch._C._functorch.is_legacy_batchedtensor
_jit_tracing = torch._C._is_tracing


# torch.compiler's predicates, looked up once (None where this torch lacks one).
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
_is_exporting = getattr(getattr(torch, "compiler", None), "is_exporting", None)
_COMPILER_CHECKS = tuple(c for c in (_is_compiling, _is_exporting) if c is not None)


def exporting() -> bool:
    """True under ``torch.export`` (which also makes :func:`compiling` true)."""
    return _is_exporting is not None and bool(_is_exporting())


def _onnx_exporting() -> bool:
    onnx = getattr(torch, "onnx", None)
    check = getattr(onnx, "is_in_onnx_export", None)
    return bool(check is not None and check())


def composite_required() -> bool:
    """True when the call must run as plain differentiable tensor operations (under
    torch.compile / torch.export only inside a ``torch.func`` transform that they trace,
    such as ``torch.compile(torch.func.grad(f))``; otherwise they keep the registered
    operators)."""
    if compiling():
        # ONNX's exporter runs torch.export, then needs operations it can translate. Dynamo
        # traces a torch.func transform by running it, so the call is inside it here too.
        return (exporting() and _onnx_exporting()) or _functorch_active()
    # The ONNX exporters need no check of their own here: the legacy one runs under
    # torch.jit tracing, the dynamo one under torch.export (handled above).
    return _functorch_active() or _forward_ad._current_level >= 0 or _jit_tracing()


def compiling() -> bool:
    """True under torch.compile or torch.export: take data-independent code paths."""
    for check in _COMPILER_CHECKS:  # noqa: SIM110 (a loop: no generator on this hot path)
        if check():
            return True
    return False


def functorch_wrapped(t: Tensor) -> bool:
    """True when ``t`` is a batched or ``torch.func`` tensor, not a plain one: the legacy
    vmap of ``is_grads_batched=True`` (and so ``jacobian(vectorize=True)``), ``vmap``, or
    ``grad``/``jvp``. In-place writes of it into plain tensors fail."""
    return _is_functorch_wrapped(t) or _is_legacy_batched(t)
