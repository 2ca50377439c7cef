"""Per-call overhead of L2BN's layers against BatchNorm's, on a tiny input.

On a ``(4, 4, 2, 2)`` input the kernels cost next to nothing, so each figure is the cost of
the Python and dispatcher layers around them. Best of ``--repeats`` runs of ``--calls``
calls each (``time.perf_counter``), in microseconds per call, at ``--threads`` threads.

Usage: python benchmarks/bench_overhead.py [--threads 1] [--repeats 5] [--calls 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import l2bn
from l2bn._impl import cpu, dispatch


def best_us(fn: Callable[[], object], repeats: int, calls: int) -> float:
    """Best per-call time of ``fn`` over ``repeats`` runs of ``calls`` calls (us)."""
    for _ in range(max(calls // 10, 1)):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / calls * 1e6


def cases(shape: tuple[int, ...]) -> dict[str, Callable[[], object]]:
    """The timed calls: modules, then each layer of L2BN's path on its own."""
    c = shape[1]
    x = torch.randn(shape, requires_grad=True)
    xd = x.detach()
    bn = torch.nn.BatchNorm2d(c)
    l2 = l2bn.L2BatchNorm2d(c)
    w, b = l2.weight, l2.bias
    rm, rv = torch.zeros(c), torch.ones(c)
    args = (x, w, b, rm, rv, 0.1, 1e-5, 1e-12, True)

    def fwd_bwd(module: torch.nn.Module) -> Callable[[], object]:
        def call() -> None:
            x.grad = None
            for p in module.parameters():
                p.grad = None
            module(x).sum().backward()

        return call

    def eval_call(module: torch.nn.Module) -> Callable[[], object]:
        def call() -> object:
            with torch.no_grad():
                return module(xd)

        return call

    calls: dict[str, Callable[[], object]] = {
        "bn module fwd (grad)": lambda: bn(x),
        "l2bn module fwd (grad)": lambda: l2(x),
        "F.batch_norm fwd (grad)": lambda: F.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5),
        "dispatch.l2_batch_norm (grad)": lambda: dispatch.l2_batch_norm(
            x, rm, rv, w, b, True, 0.1, 1e-5, 1e-12, True
        ),
        "cpu.run (grad)": lambda: cpu.run(x, rm, rv, w, b, True, 0.1, 1e-5, 1e-12, True, True),
        "op train_forward (no autograd)": lambda: cpu._train_forward(
            xd, w.detach(), b.detach(), rm, rv, 0.1, 1e-5, 1e-12, True
        ),
        "bn fwd+bwd": fwd_bwd(bn),
        "l2bn fwd+bwd": fwd_bwd(l2),
    }
    if hasattr(torch.ops.l2bn, "train"):
        calls["op l2bn::train (grad)"] = lambda: torch.ops.l2bn.train.default(*args)
    bn_eval, l2_eval = torch.nn.BatchNorm2d(c).eval(), l2bn.L2BatchNorm2d(c).eval()
    calls["bn eval (no_grad)"] = eval_call(bn_eval)
    calls["l2bn eval (no_grad)"] = eval_call(l2_eval)
    return calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_overhead", description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--shape", default="4,4,2,2", help="N,C,H,W (default 4,4,2,2)")
    parser.add_argument("--only", default="", help="only calls whose name contains this")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    for name, fn in cases(shape).items():
        if args.only in name:
            print(f"{name:34s} {best_us(fn, args.repeats, args.calls):8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
