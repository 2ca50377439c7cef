"""The Triton backend: L2BN kernels for CUDA tensors (paper eqs. 2-3).

Training forward is three kernel launches (per-row moments; the ``O(N * C)`` finalize with
the running-statistics update; the output pass), training backward three (two for
``(N, C)`` input); for small statistics (``N * C <= 8192``) the finalize is folded into the
output pass, two launches each way (one for the ``(N, C)`` backward). Eval forward is two
launches, or one when a sample fits in one tile. Statistics are
float32 for float32, float16 and bfloat16 input (as BatchNorm under autocast); nothing
synchronizes with the host, so a training step can be captured in a CUDA graph. The
kernels are :func:`torch.library.triton_op` operators (``torch.ops.l2bn_triton.*``,
:mod:`.ops`), which ``torch.compile(fullgraph=True)`` and ``torch.export`` keep; autograd
goes through :class:`.function.TritonL2BatchNormFunction`.

Availability (``UNAVAILABLE_REASON``): triton must be importable (CUDA builds of torch
bring it; it is not a dependency of l2bn) and CUDA present, unless ``TRITON_INTERPRET=1``
was set before Python started (triton reads it when it is imported): then the kernels run
in Triton's interpreter, on CPU tensors, for calls made while the backend is preferred
(``l2bn.backends.prefer("triton")``): the tests' way to check the kernels without a GPU.
``L2BN_DISABLE_TRITON=1`` switches the backend off at import;
``l2bn.backends.flags(triton=False)`` for a block of code.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import torch
from torch import Tensor

from l2bn._impl import switches

NAME = "triton"
DESCRIPTION = "Triton kernels (CUDA; float32, float16, bfloat16)"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_function: ModuleType | None = None
_interpreted = False  # the kernels run in Triton's interpreter (set by load())


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1``: kernels run in Triton's interpreter on CPU."""
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def _reason() -> str | None:
    global _function
    if os.environ.get("L2BN_DISABLE_TRITON", "") not in ("", "0"):
        return "switched off by L2BN_DISABLE_TRITON"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (CUDA builds of torch bring it)"
    if not interpreting() and not torch.cuda.is_available():
        return (
            "no CUDA device (torch.cuda.is_available() is False; with TRITON_INTERPRET=1 the "
            "kernels run on CPU in Triton's interpreter when the backend is preferred)"
        )
    try:
        _function = importlib.import_module("l2bn._impl.triton.function")
    except Exception as exc:  # an incompatible triton, a broken install: say so, run without
        return f"the Triton kernels could not be loaded ({type(exc).__name__}: {exc})"
    if interpreting():
        # The interpreter needs triton itself, not only these kernels, imported under it.
        import triton.language as tl

        for fn in (tl.zeros, _function.ops.K.row_sums_kernel):
            if "Interpreted" not in type(fn).__name__:
                return (
                    "triton was imported before TRITON_INTERPRET=1 was set (set it before "
                    "Python starts)"
                )
    return None


def load() -> str | None:
    """Decide (again) whether the backend is usable; returns and stores the reason it is
    not. Called at import."""
    global UNAVAILABLE_REASON, _interpreted
    UNAVAILABLE_REASON = _reason()
    _interpreted = UNAVAILABLE_REASON is None and interpreting()
    return UNAVAILABLE_REASON


UNAVAILABLE_REASON: str | None = None
load()


def _interpreted_call_allowed() -> bool:
    """CPU tensors: only in the interpreter, only while preferred, and not under
    ``torch.compile`` (which would trace into the interpreted kernels; export keeps the
    operators whole and is allowed)."""
    if not _interpreted:
        return False
    if switches.preferred() != NAME:
        return False
    compiler = torch.compiler
    return not compiler.is_compiling() or compiler.is_exporting()


def applies(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    grad: bool,
) -> bool:
    """CUDA input of float32/float16/bfloat16 with every parameter on its device (or CPU
    input in the interpreter, see the module docstring); eval only without autograd."""
    if x.dtype not in DTYPES or x.numel() == 0 or x.dim() < 2:
        return False
    if x.is_cuda or (x.is_cpu and _interpreted_call_allowed()):
        device = x.device
    else:
        return False
    for t in (running_mean, running_var, weight, bias):
        if t is not None and t.device != device:
            return False
    if training:
        return True
    return not (grad or running_mean.requires_grad or running_var.requires_grad)


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
    """L2BN of checked arguments that :func:`applies` accepted; running statistics are
    updated in place by the forward kernels (``momentum`` is this step's factor)."""
    return _function.run(
        x, running_mean, running_var, weight, bias, training, momentum, eps, l2_eps, scale, grad
    )
