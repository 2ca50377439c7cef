"""Eval-mode forward+backward of L2BN's layers against BatchNorm's: what fine-tuning a
network whose norms are frozen, or in eval mode, runs at every step.

Two pairs of contenders, interleaved round by round (``l2bn.bench.timing``, ``l2bn
bench``'s allocator settings), on ``l2bn bench``'s shapes (or ``--shape``):
``frozen``: ``BatchNorm`` in eval mode with its parameters frozen (as torchvision's
``FrozenBatchNorm2d``) against ``l2bn.freeze`` of an L2BN layer: the input gradient only;
``eval``: both layers in eval mode with trainable parameters: the input, weight and bias
gradients. The input requires grad (the layers before are trained). Medians in ms and the
ratio L2BN / BatchNorm of each pair.

Usage: python benchmarks/bench_eval_grad.py [--threads 2] [--rounds 20] [--shape NxC[xL|xHxW]
...]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn

import l2bn
from l2bn.bench import contenders as cn
from l2bn.bench.machine import keep_freed_memory
from l2bn.bench.timing import time_interleaved

KINDS = ("frozen", "eval")


def layers(shape: tuple[int, ...]) -> dict[str, nn.Module]:
    """The four contenders for ``shape``: ``{kind}_bn`` and ``{kind}_l2bn``, in eval mode
    with running statistics away from their initial values."""
    c, dims = shape[1], len(shape)
    out: dict[str, nn.Module] = {}
    for kind in KINDS:
        bn = cn.build("bn", c, dims).eval()
        l2 = cn.build("l2bn", c, dims).eval()
        for m in (bn, l2):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
        if kind == "frozen":
            bn.requires_grad_(False)
            l2 = l2bn.freeze(l2)
        out[f"{kind}_bn"], out[f"{kind}_l2bn"] = bn, l2
    return out


def measure(case: cn.Case, rounds: int) -> dict[str, float]:
    """Median ms of each contender's eval forward+backward on ``case``."""
    bench = cn.prepare(case, (), seed=0, modules=layers(case.shape))
    x, dy = bench.x, bench.dy

    def call(m: nn.Module) -> Callable[[], None]:
        def run() -> None:
            x.grad = None
            for p in m.parameters():
                p.grad = None
            m(x).backward(dy)

        return run

    timings = time_interleaved({name: call(m) for name, m in bench.modules.items()}, rounds)
    return {name: t.median * 1e3 for name, t in timings.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_eval_grad", description=" ".join(__doc__.split("\n\n")[0].split())
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--rounds", type=int, default=20, help="rounds (>= 1)")
    parser.add_argument("--shape", action="append", default=None, help="NxC[xL|xHxW] (repeatable)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        parser.error("--rounds and --threads must be >= 1")
    try:
        shapes = [cn.parse_shape(s) for s in args.shape] if args.shape else None
    except ValueError as error:
        parser.error(str(error))
    allocator = keep_freed_memory()
    torch.set_num_threads(args.threads)
    cases = cn.shape_cases(shapes) if shapes else cn.cases(quick=False)
    print(
        f"eval-mode forward+backward, {torch.get_num_threads()} thread(s), {args.rounds} "
        f"interleaved rounds, allocator: {allocator}; medians, ms"
    )
    print(f"{'case':<24}{'kind':<8}{'bn':>10}{'l2bn':>10}{'x BN':>8}")
    for case in cases:
        times = measure(case, args.rounds)
        for kind in KINDS:
            bn, l2 = times[f"{kind}_bn"], times[f"{kind}_l2bn"]
            print(f"{case.name:<24}{kind:<8}{bn:>10.3f}{l2:>10.3f}{l2 / bn:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
