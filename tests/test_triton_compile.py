"""The Triton kernels compiled for an NVIDIA GPU (sm_90) without one.

Triton's interpreter (``test_triton_kernels.py``) runs the kernels' arithmetic but not the
compiler, which rejects what the interpreter lets through (a loop-carried value changing
type, a block where a scalar is wanted, an unsupported shape). Here every launch the
operators make for three shapes, both training paths (``train_forward``, the functional
``train`` that ``torch.export`` records, ``train_backward``) and eval, is recorded on
``meta`` tensors instead of run, and compiled ahead of time with ``triton.compile`` for sm_90,
with the same constexprs and the argument types of both callers: a launch from Python
(Triton types a float argument ``fp32``) and ``torch.compile`` (inductor types it ``fp64``
on CUDA; a kernel that let it reach its float32 statistics failed to compile there, seen on
an H200). Triton ships the ``ptxas`` it needs. Skipped
where triton or its NVIDIA backend is missing, in the interpreter, and on a machine with
CUDA (where the kernels are compiled for real by the GPU tests).
"""

from __future__ import annotations

import importlib
import importlib.util

import pytest
import torch

from l2bn._impl import triton as triton_backend

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton"),
    pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests compile the kernels"),
    pytest.mark.skipif(
        triton_backend.interpreting(), reason="the interpreter's kernels are not compiled"
    ),
]

POINTER = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}
# (shape, channels_last, dtype): a CIFAR shape in NCHW float32 and the other in
# channels_last bfloat16 (their tiles at the two ends: 4 x 512 and 64 x 32), and (N, C).
SHAPES = [
    ((128, 16, 32, 32), False, torch.float32),
    ((128, 64, 8, 8), True, torch.bfloat16),
    ((128, 10), False, torch.float32),
]


def _signature(fn, args, meta, float_type: str) -> dict[str, str]:
    """Triton's type string of each argument, by parameter name (``float_type`` for a
    Python float)."""
    names = fn.arg_names
    types = {}
    for name, value in zip(names, args, strict=False):
        if isinstance(value, torch.Tensor):
            types[name] = POINTER[value.dtype]
        elif isinstance(value, bool):
            types[name] = "i1"
        elif isinstance(value, int):
            types[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        elif isinstance(value, float):
            types[name] = float_type
        else:
            raise TypeError(f"{name}: {type(value).__name__}")
    for name in meta:
        types[name] = "constexpr"
    assert set(types) == set(names), (fn.__name__, sorted(set(names) ^ set(types)))
    return {name: types[name] for name in names}


def _record_launches(ops, monkeypatch, float_type: str) -> dict:
    """The distinct launches of the operators on the shapes above, both training paths."""
    launches = {}

    def record(kernel, grid, *args, **meta):
        signature = _signature(kernel, args, meta, float_type)
        key = (kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__, repr(signature))
        launches.setdefault((*key, repr(sorted(meta.items()))), (kernel, signature, meta))

    monkeypatch.setattr(ops, "_launch", record)
    default = ops.FOLD_MAX_STATS
    for shape, channels_last, dtype in SHAPES:
        x = torch.empty(shape, device="meta", dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        c = shape[1]
        w, b = (torch.empty(c, device="meta") for _ in range(2))
        rm, rv = (torch.empty(c, device="meta") for _ in range(2))
        for threshold in (default, 0):  # folded (all these shapes qualify), unfolded
            monkeypatch.setattr(ops, "FOLD_MAX_STATS", threshold)
            _y, *stats = ops._train_forward(x, w, b, rm, rv, 0.1, 1e-5, 1e-12, True, True)
            ops._train_backward(x, x, w, *stats, True, True, True)
            ops._train_backward(x, x, None, *stats, False, False, True)
            ops._train(x, w, b, 1e-5, 1e-12, True, True)  # what torch.export records
        monkeypatch.setattr(ops, "FOLD_MAX_STATS", default)
        ops._eval_forward(x, rm, rv, w, None, 1e-5, 1e-12, True, True)
    return launches


@pytest.mark.parametrize("float_type", ["fp32", "fp64"], ids=["eager", "inductor"])
def test_every_launch_compiles_for_sm90(float_type, monkeypatch, tmp_path):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    try:
        from triton.backends import backends

        backends["nvidia"].compiler
    except Exception as exc:  # an install without the NVIDIA backend
        pytest.skip(f"triton's NVIDIA backend is missing ({exc})")
    ops = importlib.import_module("l2bn._impl.triton.ops")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # compile, do not reuse
    launches = _record_launches(ops, monkeypatch, float_type)
    names = {name for name, *_ in launches}
    assert {"folded_affine_kernel", "folded_grad_input_kernel", "forward_finalize_kernel"} <= names
    assert {"backward_finalize_kernel", "affine_kernel", "grad_input_kernel"} <= names
    target = GPUTarget("cuda", 90, 32)
    for kernel, signature, meta in launches.values():
        compiled = compile(ASTSource(kernel, signature, constexprs=meta), target=target)
        assert compiled.asm["cubin"], kernel.fn.__name__
