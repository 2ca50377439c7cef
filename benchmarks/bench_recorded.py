"""What autograd's recording costs each contender: the operators bare against the same
calls recorded, BatchNorm against L2BN, in training mode.

For each contender, five calls interleaved round by round (``l2bn bench``'s timing and
allocator settings): ``op fwd`` (ATen's ``native_batch_norm`` / the fused
``l2bn::train_forward`` on detached tensors, both through ``torch.ops``), ``recorded
fwd`` (``torch.batch_norm`` / ``l2bn::train`` through its entry point, as the layer
calls it, on tensors that require grad: autograd records the call), ``op fwd+bwd`` (the
forward and backward operators, ``l2bn bench --ops``), ``recorded fwd+bwd`` (the
recorded forward, then ``backward``) and ``layer fwd+bwd`` (``BatchNorm1d/2d`` /
``L2BatchNorm1d/2d`` in training mode, then ``backward``). Medians in microseconds, the
ratio L2BN / BatchNorm of each call, what recording adds to each contender, and how many
distinct addresses the outputs of each recorded forward took over the rounds: an output
that lives until the backward makes glibc hand out a different free block of the same size
from call to call (its large-bin policy), so the output is written into memory that has
left the caches; a bare call gets the block it freed.

Usage: python benchmarks/bench_recorded.py [--threads 2] [--rounds 200] [--shape 1024x512]
[--layout contiguous]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch

from l2bn._impl import cpu
from l2bn.bench.contenders import build, script_shape
from l2bn.bench.machine import keep_freed_memory
from l2bn.bench.timing import time_interleaved

CALLS = ("op fwd", "recorded fwd", "op fwd+bwd", "recorded fwd+bwd", "layer fwd+bwd")


def contender_calls(
    x: torch.Tensor, dy: torch.Tensor, addresses: dict[str, set[int]]
) -> tuple[dict[str, Callable[[], object]], Callable[[], None]]:
    """The timed calls (``"bn op fwd"``, ..., ``"l2bn recorded fwd+bwd"``) and the function
    that drops their gradients between calls. Each recorded forward adds its output's
    address to ``addresses[contender]``."""
    c = x.shape[1]
    xg = x.detach().requires_grad_()
    w = torch.ones(c, requires_grad=True)
    b = torch.zeros(c, requires_grad=True)
    wd, bd = w.detach(), b.detach()
    stats = {"bn": (torch.zeros(c), torch.ones(c)), "l2bn": (torch.zeros(c), torch.ones(c))}
    eps, momentum, l2_eps = 1e-5, 0.1, 1e-12

    def forward(name: str, recorded: bool):
        rm, rv = stats[name]
        if name == "bn":
            if recorded:
                return torch.batch_norm(xg, w, b, rm, rv, True, momentum, eps, False)
            # Through torch.ops, as the fused operator is (it has no other Python entry).
            return torch.ops.aten.native_batch_norm.default(x, wd, bd, rm, rv, True, momentum, eps)
        if recorded:
            return cpu._train_entry(xg, w, b, rm, rv, momentum, eps, l2_eps, True)
        return cpu._train_forward(x, wd, bd, rm, rv, momentum, eps, l2_eps, True)

    def recorded_forward(name: str) -> torch.Tensor:
        y = forward(name, True)
        addresses[name].add(y.data_ptr())
        return y

    def op_both(name: str) -> object:
        out = forward(name, False)
        rm, rv = stats[name]
        if name == "bn":
            return torch.ops.aten.native_batch_norm_backward.default(
                dy, x, wd, rm, rv, out[1], out[2], True, eps, [True, True, True]
            )
        return cpu._train_backward(dy, x, wd, *out[1:], True, True)

    calls: dict[str, Callable[[], object]] = {}
    layers: list[torch.nn.Module] = []
    for name in ("bn", "l2bn"):
        calls[f"{name} op fwd"] = lambda name=name: forward(name, False)
        calls[f"{name} recorded fwd"] = lambda name=name: recorded_forward(name)
        calls[f"{name} op fwd+bwd"] = lambda name=name: op_both(name)
        calls[f"{name} recorded fwd+bwd"] = lambda name=name: recorded_forward(name).backward(dy)
        layer = build(name, c, x.dim()).train()
        layers.append(layer)
        calls[f"{name} layer fwd+bwd"] = lambda layer=layer: layer(xg).backward(dy)

    def drop_grads() -> None:
        xg.grad = w.grad = b.grad = None
        for layer in layers:
            for p in layer.parameters():
                p.grad = None

    return calls, drop_grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--rounds", type=int, default=200, help="interleaved rounds (>= 1)")
    parser.add_argument("--shape", default="1024x512", help="NxC[xL|xHxW] (default 1024x512)")
    parser.add_argument("--layout", choices=("contiguous", "channels_last"), default="contiguous")
    args = parser.parse_args()
    shape = script_shape(parser, args)
    if cpu.UNAVAILABLE_REASON is not None:
        parser.error(f"the fused operators are not available: {cpu.UNAVAILABLE_REASON}")
    allocator = keep_freed_memory()
    torch.set_num_threads(args.threads)
    memory_format = (
        torch.channels_last
        if args.layout == "channels_last" and len(shape) == 4
        else torch.contiguous_format
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).contiguous(memory_format=memory_format)
    dy = torch.randn(shape, generator=gen).contiguous(memory_format=memory_format)
    addresses: dict[str, set[int]] = {"bn": set(), "l2bn": set()}
    calls, drop_grads = contender_calls(x, dy, addresses)
    timings = time_interleaved(calls, args.rounds, warmup=2, before=drop_grads)
    us = {name: statistics.median(t.samples) * 1e6 for name, t in timings.items()}
    print(
        f"{args.shape} {args.layout}, {torch.get_num_threads()} thread(s), "
        f"{args.rounds} interleaved rounds, allocator: {allocator}; medians, us"
    )
    print(f"{'call':<18}{'bn':>9}{'l2bn':>9}{'ratio':>8}")
    for call in CALLS:
        bn, l2 = us[f"bn {call}"], us[f"l2bn {call}"]
        print(f"{call:<18}{bn:>9.1f}{l2:>9.1f}{l2 / bn:>8.2f}")
    for what in ("fwd", "fwd+bwd"):
        added = [us[f"{n} recorded {what}"] - us[f"{n} op {what}"] for n in ("bn", "l2bn")]
        print(f"{'recording ' + what:<18}{added[0]:>+9.1f}{added[1]:>+9.1f}")
    print(
        f"{'output addresses':<18}{len(addresses['bn']):>9}{len(addresses['l2bn']):>9}"
        "  (distinct, recorded forwards)"
    )


if __name__ == "__main__":
    main()
