"""The training backward's passes with warm caches and with cold ones.

Times ATen's ``native_batch_norm_backward`` and the fused ``l2bn::train_backward`` on the
same (N, C) or 4-D input, each called twice a round: without the input gradient (the
per-channel reduction pass alone) and with it (the reduction, then the dx pass). The
difference of the two medians is the dx pass. Two states, each its own interleaved loop:

- warm: nothing runs between the calls;
- cold: before each call every thread writes its share of a buffer of ``--evict`` MB
  (larger than the last-level cache), then x and dy are read back (``sum``), so that the
  output dx, the small arrays and the code are cold and the inputs come from the caches,
  as after a layer whose neighbours moved more data than the caches hold;
- cold data: as cold, then the same operator runs on the first 64 rows (its code and
  small arrays warm again, the output's memory still cold).

Medians in microseconds; "x BN" is L2BN / BatchNorm. glibc keeps freed memory in the
process, as in ``l2bn bench``. The README ("Where L2BN is not at 1.0x") and
docs/performance.md read the 1d forward+backward with it.

Usage: python benchmarks/bench_cold_backward.py [--threads 2] [--rounds 400]
[--shape 1024x512] [--layout contiguous|channels_last] [--evict 64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from l2bn.bench import machine
from l2bn.bench.contenders import script_shape

STATES = ("warm", "cold", "cold data")
SMALL_ROWS = 64


def backward_calls(x: torch.Tensor, dy: torch.Tensor) -> dict[str, Callable[[], object]]:
    """``{bn,l2bn}_{reduction,both}``: each backward operator without and with dx, on the
    statistics of one training forward of ``x`` (weight 1, bias 0)."""
    from l2bn._impl import cpu

    c = x.shape[1]
    w, b = torch.ones(c, dtype=x.dtype), torch.zeros(c, dtype=x.dtype)
    running = (torch.zeros(c, dtype=x.dtype), torch.ones(c, dtype=x.dtype))
    _, *l2_stats = cpu._train_forward(x, w, b, *running, 0.1, 1e-5, 1e-12, True)
    _, mean, invstd = torch.native_batch_norm(x, w, b, *running, True, 0.1, 1e-5)

    def bn(dx: bool) -> Callable[[], object]:
        mask = [dx, True, True]
        return lambda: torch.ops.aten.native_batch_norm_backward(
            dy, x, w, *running, mean, invstd, True, 1e-5, mask
        )

    def l2(dx: bool) -> Callable[[], object]:
        return lambda: cpu._train_backward(dy, x, w, *l2_stats, True, dx)

    return {
        "bn_reduction": bn(False),
        "bn_both": bn(True),
        "l2bn_reduction": l2(False),
        "l2bn_both": l2(True),
    }


def time_calls(
    calls: dict[str, Callable[[], object]], rounds: int, before: Callable[[str], None]
) -> dict[str, float]:
    """Median seconds of each call over ``rounds`` rounds, ``before(name)`` run untimed
    ahead of every call; the order alternates round by round (forward, then reversed)."""
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            before(name)
            start = time.perf_counter()
            calls[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def evictor(
    x: torch.Tensor,
    dy: torch.Tensor,
    megabytes: int,
    then: dict[str, Callable[[], object]] | None = None,
) -> Callable[[str], None]:
    """``before(name)``: writes ``megabytes`` MB with every thread (``fill_`` runs in
    parallel), reads x and dy back, then runs ``then[name]`` (if given)."""
    buffer = torch.empty(megabytes * (1 << 20) // 4)
    value = [0.0]

    def evict(name: str) -> None:
        value[0] += 1.0
        buffer.fill_(value[0])
        x.sum()
        dy.sum()
        if then is not None:
            then[name]()

    return evict


def table(medians: dict[str, float]) -> list[tuple[str, float, float, float]]:
    """``(pass, BatchNorm us, L2BN us, L2BN / BatchNorm)`` for the reduction, the whole
    backward and the dx pass (whole minus reduction)."""
    rows = []
    for label, bn, l2 in (
        ("reduction", medians["bn_reduction"], medians["l2bn_reduction"]),
        ("backward", medians["bn_both"], medians["l2bn_both"]),
        (
            "dx pass",
            medians["bn_both"] - medians["bn_reduction"],
            medians["l2bn_both"] - medians["l2bn_reduction"],
        ),
    ):
        rows.append((label, bn * 1e6, l2 * 1e6, l2 / bn if bn > 0 else float("nan")))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--rounds", type=int, default=400, help="rounds a state (400, >= 1)")
    parser.add_argument("--shape", default="1024x512", help="NxC or NxCxHxW (default 1024x512)")
    parser.add_argument(
        "--layout",
        choices=("contiguous", "channels_last"),
        default="contiguous",
        help="memory layout of a 4-D shape (default contiguous)",
    )
    parser.add_argument(
        "--evict", type=int, default=64, help="MB written before a cold call (default 64)"
    )
    args = parser.parse_args()
    shape = script_shape(parser, args)
    if args.evict < 1:
        parser.error("--evict must be >= 1")
    if args.layout == "channels_last" and len(shape) != 4:
        parser.error("--layout channels_last takes a 4-D --shape (NxCxHxW)")
    memory_format = (
        torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    )
    torch.set_num_threads(args.threads)
    allocator = machine.keep_freed_memory()
    x = torch.randn(shape).contiguous(memory_format=memory_format)
    dy = torch.randn(shape).contiguous(memory_format=memory_format)
    calls = backward_calls(x, dy)
    rows = min(SMALL_ROWS, shape[0])
    small = backward_calls(
        x[:rows].contiguous(memory_format=memory_format),
        dy[:rows].contiguous(memory_format=memory_format),
    )
    befores = {
        "warm": lambda name: None,
        "cold": evictor(x, dy, args.evict),
        "cold data": evictor(x, dy, args.evict, small),
    }
    threads = torch.get_num_threads()
    print(f"{args.shape} {args.layout}, float32, {threads} thread(s); allocator: {allocator}")
    print(f"medians of {args.rounds} interleaved rounds a state, us")
    print(f"{'state':<11}{'pass':<11}{'BN':>9}{'L2BN':>9}{'x BN':>7}")
    with torch.no_grad():
        for state in STATES:
            for name, call in calls.items():  # warm-up
                befores[state](name)
                call()
            medians = time_calls(calls, args.rounds, befores[state])
            for label, bn, l2, ratio in table(medians):
                print(f"{state:<11}{label:<11}{bn:>9.1f}{l2:>9.1f}{ratio:>7.2f}")


if __name__ == "__main__":
    main()
