"""A small parity check of the fused kernels, run by ``test_paths_isa.py`` in a subprocess.

The parent sets ``L2BN_CPU_ISA`` and ``ATEN_CPU_CAPABILITY`` (both are read when the
process loads ``l2bn._C`` and ATen); this script checks the fused training forward,
backward and eval forward against the float64 reference on shapes that exercise every
vector loop and its leftovers, and prints one JSON line: the instruction set the kernels
report, ATen's CPU capability, the calls of each fused operator and the worst relative
error per dtype.
"""

from __future__ import annotations

import json
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from _reference import adversarial_input, reference_l2bn, relative_error
from l2bn import L2BatchNorm1d, L2BatchNorm2d, backends

# (shape, channels_last): channel blocks of 16 plus leftovers, tiles of 8 rows plus
# leftovers, a 1d (N, C, L) input, fewer samples than threads, rows shorter than a vector
# step, and few channels (eval's channel-last units group positions, the last one short),
# the last two in samples small enough for eval's two passes and large enough for its
# pipelined loop.
SHAPES = [
    ((6, 40, 4, 4), False),
    ((4, 300, 4, 4), False),
    ((6, 3, 9, 10), True),
    ((4, 3, 40, 41), True),
    ((6, 37, 5, 7), False),
    ((6, 37, 5, 7), True),
    ((5, 19, 33), False),
    ((21, 70), False),
    ((1, 20, 9, 9), False),
    ((4, 48, 12, 11), True),
    ((70, 37), False),
]


class FusedCalls(TorchDispatchMode):
    """Counts the fused operators as they run, below autograd: the training backward is
    called by the C++ autograd kernel of ``l2bn::train``, out of Python's reach."""

    def __init__(self) -> None:
        super().__init__()
        self.counts = {
            "train_forward": 0,
            "train_backward": 0,
            "eval_forward": 0,
            "eval_backward": 0,
        }

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name().removeprefix("l2bn::")
        if name in self.counts:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def step(x: torch.Tensor, dy: torch.Tensor, reference: bool) -> list[torch.Tensor]:
    """Training forward + backward, an eval forward, and an eval forward + backward (the
    input, weight and bias gradients of a frozen-statistics step) of one layer (or the
    reference)."""
    c = x.shape[1]
    g = torch.Generator().manual_seed(0)
    w = torch.empty(c, dtype=torch.float64).uniform_(0.5, 1.5, generator=g)
    b = torch.empty(c, dtype=torch.float64).uniform_(-1, 1, generator=g)
    xg = x.detach().clone().requires_grad_()
    if reference:
        w, b = w.requires_grad_(), b.requires_grad_()
        rm, rv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
        y = reference_l2bn(xg, rm, rv, w, b, training=True)
        y.backward(dy)
        with torch.no_grad():
            y_eval = reference_l2bn(x, rm, rv, w, b, training=False)
        xe = x.detach().clone().requires_grad_()
        we, be = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
        reference_l2bn(xe, rm, rv, we, be, training=False).backward(dy)
        return [y, xg.grad, w.grad, b.grad, rm, rv, y_eval, xe.grad, we.grad, be.grad]
    layer = (L2BatchNorm1d if x.dim() < 4 else L2BatchNorm2d)(c).to(x.dtype)
    if x.dim() == 4 and not x.is_contiguous():
        layer = layer.to(memory_format=torch.channels_last)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    with backends.flags(cpu=True, pytorch=False):
        y = layer(xg)
        y.backward(dy)
        layer.eval()
        with torch.no_grad():
            y_eval = layer(x)
        grads = [layer.weight.grad.clone(), layer.bias.grad.clone()]
        layer.zero_grad()
        xe = x.detach().clone().requires_grad_()
        layer(xe).backward(dy)
    return [y, xg.grad, *grads, layer.running_mean, layer.running_var, y_eval, xe.grad,
            layer.weight.grad, layer.bias.grad]  # fmt: skip


def main() -> None:
    calls = FusedCalls()
    worst = {"float32": 0.0, "float64": 0.0, "float64 offset": 0.0}
    for i, (shape, channels_last) in enumerate(SHAPES):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 2
        dy = torch.randn(shape, generator=g, dtype=torch.float64)
        inputs = {"float32": x, "float64": x, "float64 offset": adversarial_input("offset", shape)}
        for kind, x64 in inputs.items():
            if channels_last:
                x64 = x64.contiguous(memory_format=torch.channels_last)
                dy = dy.contiguous(memory_format=torch.channels_last)
            dtype = torch.float32 if kind == "float32" else torch.float64
            with calls:
                ours = step(x64.to(dtype), dy.to(dtype), reference=False)
            expected = step(x64, dy, reference=True)
            for a, r in zip(ours, expected, strict=True):
                assert a.dtype == dtype
                worst[kind] = max(worst[kind], relative_error(a, r))
    print(
        json.dumps(
            {
                "isa": torch.ops.l2bn.cpu_isa(),
                "isas": torch.ops.l2bn.cpu_isas(),
                "aten": torch.backends.cpu.get_cpu_capability(),
                "calls": calls.counts,
                "worst": worst,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
