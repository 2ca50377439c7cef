"""The ATen operators of one call of the pure-PyTorch path, as it runs on GPUs and other devices.

Every operator an ``L2BatchNorm*d`` call dispatches is recorded with a ``TorchDispatchMode``:
on the ``meta`` device (shapes and dtypes only; reading a value on the host raises there)
and on CPU tensors inside ``passes.accelerator_paths()`` (the same path with real data).
The counts include the layer's own work (``num_batches_tracked``, the running statistics)
and the autograd engine's (``detach`` of the gradients).

Before issue #14 the same calls dispatched, on ``meta`` for a ``(8, 16, 8, 8)`` input with
affine parameters: training forward 54 operators in float32 and 60 in bfloat16, backward
64 and 72, eval 14 and 19; bfloat16 input was copied to full-size float32 tensors in every
pass (the input, ``dy``, their products, the output before its cast: 68 bytes per element in
backward), and every forward recomputed a centred variance of the whole input.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from l2bn import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d, backends
from l2bn._impl import passes

LAYER = {2: L2BatchNorm1d, 3: L2BatchNorm1d, 4: L2BatchNorm2d, 5: L2BatchNorm3d}

# Operators that launch no device work: views, allocations, detach.
METADATA = {
    "aten.view.default",
    "aten._unsafe_view.default",
    "aten.unsqueeze.default",
    "aten.expand.default",
    "aten.alias.default",
    "aten.detach.default",
    "aten.empty_like.default",
    "aten.empty.memory_format",
}
# Operators that read a tensor's value on the host (a device synchronization), or whose
# output shape depends on data.
HOST_READS = {
    "aten._local_scalar_dense.default",
    "aten.item.default",
    "aten.is_nonzero.default",
    "aten.nonzero.default",
    "aten.equal.default",
}

# Upper bounds per call (all dispatched operators / those that launch device work), for
# every shape, layout, dtype and affine / scale setting below. Measured after issue #14:
# forward 24-31 / 22-26, backward 33-38 / 26-30, eval 11-13 / 8-9.
BOUNDS = {"forward": (31, 26), "backward": (38, 30), "eval": (13, 9)}


class Meta(NamedTuple):
    """What the checks need of a tensor (no reference is kept: holding the gradients would
    make autograd copy them instead of handing them over)."""

    numel: int
    dtype: torch.dtype
    device: str

    @classmethod
    def of(cls, t: torch.Tensor) -> Meta:
        return cls(t.numel(), t.dtype, t.device.type)


class Recorder(TorchDispatchMode):
    """Every dispatched operator with the size, dtype and device of its tensor arguments
    (``out=`` excluded) and outputs."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel = numel
        self.calls: list[tuple[str, list[Meta], list[Meta]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        read = tree_flatten((args, {k: v for k, v in kwargs.items() if k != "out"}))[0]
        inputs = [Meta.of(t) for t in read if isinstance(t, torch.Tensor)]
        outputs = [Meta.of(t) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.calls.append((str(func), inputs, outputs))
        return out

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]

    def compute(self) -> list[str]:
        return [name for name in self.names if name not in METADATA]

    def full_size(self, tensors: list[Meta]) -> list[Meta]:
        return [t for t in tensors if t.numel == self.numel]

    def traffic(self) -> tuple[int, int]:
        """Bytes per input element read and written by the operators that launch work:
        full-size tensor arguments are read (``self`` of an in-place op too), full-size
        outputs written."""
        read = written = 0
        for name, inputs, outputs in self.calls:
            if name in METADATA:
                continue
            read += sum(t.dtype.itemsize for t in self.full_size(inputs))
            written += sum(t.dtype.itemsize for t in self.full_size(outputs))
        return read, written


def _step(shape, dtype, param_dtype, layout, affine, scale, device):
    """A training forward, its backward and an eval forward of a fresh layer, recorded."""
    layer = LAYER[len(shape)](
        shape[1], affine=affine, scale=scale, device=device, dtype=param_dtype
    )
    x = torch.randn(shape, device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    numel = x.numel()
    with backends.flags(cpu=False), passes.accelerator_paths(True):
        with Recorder(numel) as forward:
            y = layer(x)
        dy = torch.randn_like(y)
        with Recorder(numel) as backward:
            y.backward(dy)
        layer.eval()
        with torch.no_grad(), Recorder(numel) as evaluate:
            y_eval = layer(x)
    assert y.dtype == y_eval.dtype == x.grad.dtype == dtype
    assert y.shape == x.grad.shape == y_eval.shape == x.shape
    if layout == "channels_last":
        for t in (y, x.grad, y_eval):
            assert t.is_contiguous(memory_format=torch.channels_last)
    return {"forward": forward, "backward": backward, "eval": evaluate}


CASES = [
    ((8, 16, 8, 8), "contiguous"),
    ((8, 16, 8, 8), "channels_last"),
    ((4, 3, 5), "contiguous"),
    ((2, 3, 4, 5, 6), "contiguous"),
    ((6, 5), "contiguous"),
]
DTYPES = [
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.bfloat16, torch.float32),  # half input, float32 layer: autocast's layout
    (torch.float16, torch.float32),
]


@pytest.mark.parametrize("device", ["meta", "cpu"])
@pytest.mark.parametrize("shape,layout", CASES)
@pytest.mark.parametrize("dtype,param_dtype", DTYPES)
@pytest.mark.parametrize("affine,scale", [(True, True), (False, False)])
def test_operators_per_call(device, shape, layout, dtype, param_dtype, affine, scale):
    """Far fewer operators than before, none that reads a value back to the host, none that
    makes a full-size float32 tensor of half input (or a float64 one of float32 input)."""
    calls = _step(shape, dtype, param_dtype, layout, affine, scale, device)
    for phase, recorder in calls.items():
        total, work = BOUNDS[phase]
        assert len(recorder.names) <= total, (phase, len(recorder.names), recorder.names)
        assert len(recorder.compute()) <= work, (phase, recorder.compute())
        assert not HOST_READS & set(recorder.names), (phase, recorder.names)
        for name, inputs, outputs in recorder.calls:
            for t in inputs + outputs:
                assert t.device == device, (phase, name, t.device)
            if dtype == torch.float32:
                assert all(t.dtype != torch.float64 for t in outputs), (phase, name)
            elif len(shape) > 2:  # (N, C) input: the (N, C) statistics are full-size
                wide = [t for t in recorder.full_size(outputs) if t.dtype == torch.float32]
                assert not wide, (phase, name, [t.shape for t in wide])


@pytest.mark.parametrize("device", ["meta", "cpu"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize(
    "dtype,param_dtype,expected",
    [
        # (forward, backward, eval) bytes per input element, read + written.
        (torch.float32, torch.float32, ((8, 4), (32, 16), (8, 4))),
        (torch.bfloat16, torch.float32, ((6, 2), (16, 8), (4, 2))),
        (torch.float16, torch.float32, ((6, 2), (16, 8), (4, 2))),
    ],
)
def test_full_size_traffic(device, layout, dtype, param_dtype, expected):
    """The full-size passes, derived from the operators: forward one variance reduction
    (float32: ``var_mean``; half input: ``mean`` and ``var``, float32 results) and the output
    pass; backward the sums of ``dy`` and of ``(x - mu * rho) * dy`` (one buffer in x's dtype)
    and the two-step input gradient into that buffer; eval the norm and the output pass.
    BatchNorm on a GPU moves 2 reads + 1 write forward, 4 reads + 1 write backward."""
    calls = _step((8, 16, 8, 8), dtype, param_dtype, layout, True, True, device)
    for phase, want in zip(("forward", "backward", "eval"), expected, strict=True):
        assert calls[phase].traffic() == want, (phase, calls[phase].names)


def test_no_centred_recomputation_of_the_input():
    """The forward reads the input in one variance reduction and one output pass: nothing
    else touches a full-size tensor (before issue #14, every forward off the CPU also
    recomputed a centred variance of the whole input, to replace ill-conditioned rows)."""
    calls = _step((8, 16, 8, 8), torch.float32, torch.float32, "contiguous", True, True, "meta")
    touched = [
        name
        for name, inputs, outputs in calls["forward"].calls
        if name not in METADATA and calls["forward"].full_size(inputs + outputs)
    ]
    assert touched == ["aten.var_mean.correction", "aten.addcmul.default"]
