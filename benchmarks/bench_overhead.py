"""Per-call overhead of L2BN's layers against BatchNorm's, on a tiny input.

On a ``(4, 4, 2, 2)`` input the kernels cost next to nothing, so each figure is the cost of
the Python and dispatcher layers around them. Best of ``--repeats`` runs of ``--calls``
calls each (``time.perf_counter``), in microseconds per call, at ``--threads`` threads.

With ``--cold``, each call is timed alone after the caches were evicted (64 MB written,
``l2bn.bench.caches``), the calls interleaved round by round (``l2bn.bench.timing``),
medians of ``--rounds`` rounds: what the layers around the kernels cost a call that finds
their code out of the caches, as a layer's call does after the layers before it ran, or
after the naive composite in ``l2bn bench``'s rounds. The ``op l2bn::train`` and ``op
eval_forward`` rows call the operators through ``torch.ops``, the ``entry`` rows through
the entry points the layers use (``l2bn._C.train``, ``l2bn._C.eval_forward``).

Usage: python benchmarks/bench_overhead.py [--threads 1] [--repeats 5] [--calls 2000]
[--cold] [--rounds 60] [--shape 4,4,2,2] [--only TEXT]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import l2bn
from l2bn import backends
from l2bn._impl import cpu, dispatch
from l2bn.bench.caches import evict_caches, eviction_buffer
from l2bn.bench.timing import time_interleaved


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

    def graph_fwd_bwd(forward: Callable[[], torch.Tensor]) -> Callable[[], object]:
        def call() -> None:
            x.grad = w.grad = b.grad = None
            forward().sum().backward()

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
    calls["F.batch_norm fwd+bwd"] = graph_fwd_bwd(
        lambda: F.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5)
    )
    calls["op l2bn::train (grad)"] = lambda: torch.ops.l2bn.train.default(*args)
    calls["op l2bn::train fwd+bwd"] = graph_fwd_bwd(lambda: torch.ops.l2bn.train.default(*args))
    calls["entry train fwd+bwd"] = graph_fwd_bwd(lambda: cpu._train_entry(*args))
    bn_eval, l2_eval = torch.nn.BatchNorm2d(c).eval(), l2bn.L2BatchNorm2d(c).eval()
    calls["bn eval (no_grad)"] = eval_call(bn_eval)
    calls["l2bn eval (no_grad)"] = eval_call(l2_eval)
    # Eval mode with a graph (fine-tuning with frozen statistics): the input and the
    # parameters' gradients.
    calls["bn eval fwd+bwd"] = fwd_bwd(bn_eval)
    calls["l2bn eval fwd+bwd"] = fwd_bwd(l2_eval)
    eval_args = (xd, rm, rv, w.detach(), b.detach(), 1e-5, 1e-12, True)

    def eval_op() -> object:
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.l2bn.eval_forward.default(*eval_args)

    calls["op eval_forward (below autograd)"] = eval_op
    calls["entry eval_forward"] = lambda: cpu._eval_entry(*eval_args)
    return calls


# The calls of --cold (the balanced rounds take at most 12): the layers, and the calls
# below them whose difference is the entry points'.
COLD_CALLS = (
    "bn fwd+bwd",
    "l2bn fwd+bwd",
    "F.batch_norm fwd+bwd",
    "op l2bn::train fwd+bwd",
    "entry train fwd+bwd",
    "bn eval (no_grad)",
    "l2bn eval (no_grad)",
    "bn eval fwd+bwd",
    "l2bn eval fwd+bwd",
    "op eval_forward (below autograd)",
    "entry eval_forward",
)


def cold_us(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median microseconds of each call, each timed alone after the caches were evicted."""
    buffer = eviction_buffer()
    timings = time_interleaved(calls, rounds, before=lambda: evict_caches(buffer))
    return {name: t.median * 1e6 for name, t in timings.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_overhead", description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--shape", default="4,4,2,2", help="N,C,H,W (default 4,4,2,2)")
    parser.add_argument("--only", default="", help="only calls whose name contains this")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="each call timed alone after the caches were evicted; medians of --rounds",
    )
    parser.add_argument("--rounds", type=int, default=60, help="rounds of --cold (>= 1)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if not backends.available("cpu"):
        parser.error(f"the fused CPU kernels are needed: {backends.unavailable_reason('cpu')}")
    torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    calls = {
        name: fn
        for name, fn in cases(shape).items()
        if args.only in name and (name in COLD_CALLS or not args.cold)
    }
    if args.cold:
        print(f"caches evicted before each call, medians of {args.rounds} rounds")
        times = cold_us(calls, args.rounds)
    else:
        times = {name: best_us(fn, args.repeats, args.calls) for name, fn in calls.items()}
    for name, us in times.items():
        print(f"{name:34s} {us:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
