"""Where the time of a large-map call goes: user CPU, kernel CPU (page faults) and wall.

Every output of 32 MB or more is a fresh ``mmap`` (glibc's largest threshold), so each call
on a 51 MB map faults in its output page by page. This command times ATen's BatchNorm
operator and the fused L2BN operator (``l2bn bench --ops``'s calls) and, as the cost of the
faults alone, ``torch.empty_like(x).fill_(0)``, interleaved, with ``resource.getrusage``
around each call: medians of the wall time and of the user and system CPU time, in ms.
The kernel splits CPU time into user and system by clock ticks: read the split over many
rounds, not one call.

Usage: python benchmarks/bench_faults.py [--threads 1] [--rounds 40] [--mode train_fwd]
[--shape 64x64x56x56] [--layout channels_last]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from l2bn.bench.contenders import MODES, op_calls, script_shape


def measure(calls: dict, rounds: int) -> dict[str, tuple[float, float, float]]:
    """Median (wall, user, system) milliseconds of each call, interleaved round by round."""
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            before = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            call()
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
            user = after.ru_utime - before.ru_utime
            system = after.ru_stime - before.ru_stime
            samples[name].append((wall, user, system))
    return {
        name: tuple(statistics.median(s[i] for s in rows) * 1e3 for i in range(3))
        for name, rows in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds (40, >= 1)")
    parser.add_argument("--mode", choices=MODES, default="train_fwd", help="default train_fwd")
    parser.add_argument("--shape", default="64x64x56x56", help="NxCxHxW (default 64x64x56x56)")
    parser.add_argument(
        "--layout", choices=("contiguous", "channels_last"), default="channels_last"
    )
    args = parser.parse_args()
    shape = script_shape(parser, args)
    torch.set_num_threads(args.threads)
    memory_format = (
        torch.channels_last
        if args.layout == "channels_last" and len(shape) == 4
        else torch.contiguous_format
    )
    x = torch.randn(shape).contiguous(memory_format=memory_format)
    dy = torch.randn(shape).contiguous(memory_format=memory_format)
    calls = dict(op_calls(args.mode, x, dy))
    calls["empty_like+fill"] = lambda: torch.empty_like(x).fill_(0)
    for call in calls.values():  # warm-up
        call()
    with torch.no_grad():
        times = measure(calls, args.rounds)
    print(
        f"{args.mode}, {args.shape} {args.layout}, {torch.get_num_threads()} thread(s); "
        f"medians of {args.rounds} rounds, ms"
    )
    print(f"{'call':<18}{'wall':>9}{'user':>9}{'system':>9}")
    for name, (wall, user, system) in times.items():
        print(f"{name:<18}{wall:>9.2f}{user:>9.2f}{system:>9.2f}")


if __name__ == "__main__":
    main()
