"""How much a call depends on what ran before it: each contender's median by the call just
before it and by whether a given contender (default: the naive composite) ran at any time
since its own previous call.

The contenders of ``l2bn bench`` (its modules, timing and allocator settings) run in
rounds of a seeded random order, so every history occurs; each call is filed under its
predecessor and under whether ``--marker`` ran since the same contender's previous call.
This is what ``l2bn.bench.timing.fair_period`` equalizes between contenders (README, "How
the rounds are run"). ``--contenders bn,l2bn`` leaves the naive composite out of the
process altogether.

One more contender exists here only: ``plain``, the training-mode composite's output in
plain tensor operations (``F.normalize``, then the batch statistics by ``mean`` and
``var``; no affine parameters, no running statistics, more intermediate tensors), which
runs none of BatchNorm's code. The composite runs BatchNorm's (its second half is a
BatchNorm layer), so it leaves that code warm for the next ``bn`` call and not for
``l2bn``; after ``plain`` neither finds its code warm (docs/performance.md, "What is not
at 1.0x, and why", the 1d bullet).

Usage: python benchmarks/bench_history.py [--shape 128x64x8x8] [--layout channels_last]
[--mode train_fwd_bwd] [--threads 2] [--rounds 240] [--marker naive|plain|bn|l2bn]
[--contenders bn,naive,l2bn]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from torch import Tensor, nn

from l2bn.bench import contenders as cn
from l2bn.bench.machine import keep_freed_memory

NAMES = (*cn.CONTENDERS, "plain")


class PlainComposite(nn.Module):
    """The naive composite (training mode, unit weight, zero bias) in plain tensor
    operations: :func:`l2bn.bench.contenders.naive_normalize`, then
    ``(xh - mean) / sqrt(var + eps)`` with the per-channel batch mean and biased variance
    from ``Tensor.mean`` and ``Tensor.var``. Same output as the composite, none of
    BatchNorm's code; no parameters, no running statistics."""

    def __init__(self, eps: float = 1e-5, l2_eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps
        self.l2_eps = l2_eps

    def forward(self, x: Tensor) -> Tensor:
        xh = cn.naive_normalize(x, self.l2_eps)
        dims = [0, *range(2, x.dim())]
        mean = xh.mean(dims, keepdim=True)
        var = xh.var(dims, unbiased=False, keepdim=True)
        return (xh - mean) * torch.rsqrt(var + self.eps)


def filed(sequence: list[str], marker: str | None) -> list[tuple[str, str | None, bool]]:
    """For each call of ``sequence``: its contender, the contender just before it (None for
    the first) and whether ``marker`` ran since that contender's previous call (or since
    the start)."""
    out = []
    for i, name in enumerate(sequence):
        since = False
        for earlier in reversed(sequence[:i]):
            if earlier == name:
                break
            since = since or earlier == marker
        out.append((name, sequence[i - 1] if i else None, since))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--shape", default="128x64x8x8", help="NxC[xL|xHxW]")
    parser.add_argument(
        "--layout", choices=("contiguous", "channels_last"), default="channels_last"
    )
    parser.add_argument("--mode", choices=cn.MODES, default="train_fwd_bwd")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--rounds", type=int, default=240, help="rounds (>= 1)")
    parser.add_argument(
        "--marker",
        choices=NAMES,
        default=None,
        help="the contender whose runs since another's previous call are counted, its own "
        "rows left out (default: naive, else plain, when among the contenders; else none)",
    )
    parser.add_argument(
        "--contenders",
        default=",".join(cn.CONTENDERS),
        help="comma-separated subset of bn,naive,l2bn,plain (default: bn,naive,l2bn)",
    )
    args = parser.parse_args()
    shape = cn.script_shape(parser, args)
    names = [name.strip() for name in args.contenders.split(",") if name.strip()]
    if not names or any(name not in NAMES for name in names):
        parser.error(f"--contenders: expected names from {', '.join(NAMES)}")
    if len(set(names)) != len(names):
        parser.error("--contenders: each name once")
    if "plain" in names and args.mode == "eval_fwd":
        parser.error("--contenders plain: training modes only (it has no running statistics)")
    if args.marker is None:
        args.marker = next((name for name in ("naive", "plain") if name in names), None)
    elif args.marker not in names:
        parser.error(f"--marker {args.marker}: not among --contenders {','.join(names)}")
    if all(name == args.marker for name in names):
        parser.error(
            "--contenders: a contender besides the marker is needed (its rows are left out)"
        )
    allocator = keep_freed_memory()
    torch.set_num_threads(args.threads)
    layout = args.layout if len(shape) == 4 else "contiguous"
    case = cn.Case(shape, layout)
    bench = cn.prepare(case, [name for name in names if name != "plain"], seed=0)
    if "plain" in names:
        bench.modules["plain"] = PlainComposite()
    calls = {}
    for name, m in bench.modules.items():
        m.train(args.mode != "eval_fwd")
        calls[name] = cn.mode_call(m, args.mode, bench.x, bench.dy)
    # Seeded random rounds, not the fair period of l2bn bench: every history occurs.
    rng = random.Random(0)
    sequence = [name for _ in range(args.rounds + 1) for name in rng.sample(names, len(names))]
    samples: dict[tuple[str, str | None, bool], list[float]] = {}
    for i, key in enumerate(filed(sequence, args.marker)):
        bench.drop_grads()
        start = time.perf_counter()
        calls[key[0]]()
        elapsed = time.perf_counter() - start
        if i >= len(names):  # after the warm-up round
            samples.setdefault(key, []).append(elapsed)
    print(
        f"{case.name} {args.mode}, {torch.get_num_threads()} thread(s), {args.rounds} random "
        f"rounds, allocator: {allocator}; medians, ms"
    )
    since_label = f"{args.marker} since own last" if args.marker else "(no marker)"
    print(f"{'contender':<10}{'after':<8}{since_label:>20}{'ms':>9}{'calls':>7}")
    for (name, before, since), times in sorted(samples.items()):
        if name == args.marker:
            continue
        median = statistics.median(times) * 1e3
        flag = str(since) if args.marker else "-"
        print(f"{name:<10}{before:<8}{flag:>20}{median:>9.3f}{len(times):>7}")


if __name__ == "__main__":
    main()
