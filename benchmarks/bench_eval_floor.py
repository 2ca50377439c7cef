"""Measured floor of eval-mode L2BN on 2d maps, beside native BatchNorm.

Eval-mode L2BN writes ``y = gain[c] / rho[n] * x + shift[c]``: every output of sample ``n``
needs the norm of the whole sample first, so each value is read twice (once for the norm,
once for the output) and written once; BatchNorm's eval reads it once and writes it once.
Once a sample (``C * H * W * 4`` bytes) outgrows L1, the second read comes from L2. A
sample is contiguous in memory in both layouts, so both have this data flow; each shape
is measured contiguous and channels_last (channels_last when C is a multiple of 16, the
floor loops' vector width).

This command times, in one process and interleaved round by round (l2bn.bench.timing):
  - ``bn``: native BatchNorm eval (``torch.batch_norm``);
  - ``l2bn``: the fused eval operator (``l2bn::eval_forward``, as the layer calls it);
  - ``stream``: the least work of BatchNorm's data flow (read once, write once);
  - ``two_pass`` and ``pipelined``: the least work of L2BN's data flow (read twice, write
    once) under two schedules; the faster of the two is the floor.
The three loops (eval_floor.cpp) are built here for this processor, or for AVX2 with
``--isa avx2`` (which also runs the kernels and ATen at AVX2, as ``l2bn bench --isa``
does). Each line prints medians in microseconds and ratios to ``bn``: ``floor / bn`` is
the lowest ratio L2BN's data flow reached on this machine, ``l2bn / floor`` how far the
operator is above it.

The rounds cycle through ``l2bn.bench.timing.balanced_orders`` of the five contenders: each
has each other one just before it equally often over every 4 rounds (30 rounds are 7
periods and 2 rounds), but not the same history since its previous call as ``l2bn bench``'s
three contenders have: compare the ratios of several runs.

``python benchmarks/bench_eval_floor.py [--threads N] [--isa avx2] [--alone] [--cold
[all|data]] [--shape NxCxHxW ...]`` (default: the 2d shapes of ``l2bn bench``; ``--alone``:
each contender in its own run of rounds, back to back, instead of interleaved; ``--cold``:
each call timed alone after the caches were evicted, as after the naive composite in
``l2bn bench``; ``--cold data``: the code warmed again by a small call of each contender,
only the tensors cold)
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

import torch
import torch.utils.cpp_extension

from l2bn._impl import cpu
from l2bn.bench import machine
from l2bn.bench.caches import evict_caches, eviction_buffer
from l2bn.bench.contenders import FULL_SHAPES_2D, parse_shape
from l2bn.bench.timing import time_interleaved

HERE = pathlib.Path(__file__).resolve().parent
LANES = 16  # the floor loops' channel-last vector width (eval_floor.cpp, kW)
FLAGS = {None: ["-march=native"], "avx2": ["-mavx2", "-mfma", "-mno-avx512f"]}


def build(isa: str | None):
    name = f"l2bn_eval_floor_{isa or 'native'}"
    directory = HERE.parent / "build" / name
    directory.mkdir(parents=True, exist_ok=True)
    return torch.utils.cpp_extension.load(
        name,
        [str(HERE / "eval_floor.cpp")],
        # -fopenmp: at::parallel_for is OpenMP in torch's Linux builds (serial without it).
        extra_cflags=["-O3", "-fopenmp", *FLAGS[isa]],
        extra_ldflags=["-fopenmp"],
        build_directory=str(directory),
        verbose=False,
    )


def l2bn_eval(x, mean, var, weight, bias):
    """The fused eval operator as the layer calls it without a graph: through its entry
    point (``l2bn._C.eval_forward``, csrc/entry_points.cpp); no input requires grad, so
    its C++ autograd kernel records nothing."""
    return cpu._eval_entry(x, mean, var, weight, bias, 1e-5, 1e-12, True)


def repeated(call, times: int):
    def run() -> None:
        for _ in range(times):
            call()

    return run


def layouts(shape: tuple[int, ...]) -> tuple[str, ...]:
    """The layouts measured for ``shape``: channels_last too when C is a multiple of 16."""
    return ("contiguous", "channels_last") if shape[1] % LANES == 0 else ("contiguous",)


COLD = ("all", "data")


def measure(
    shape: tuple[int, ...],
    floor,
    rounds: int,
    layout: str = "contiguous",
    alone: bool = False,
    cold: str | None = None,
) -> dict[str, float]:
    """Median microseconds of each contender's call. Interleaved round by round, or with
    ``alone`` each contender in its own run of rounds, back to back (its tensors warm in the
    caches, no other contender's data in between). With ``cold``, each timed sample is one
    call after the caches were evicted (untimed): ``"all"``, or ``"data"``, where every
    contender then runs once on a 2-sample input, so that the code and the call path are
    warm again and only the tensors come from memory."""
    c = shape[1]
    gen = torch.Generator().manual_seed(0)
    mean = torch.rand(c, generator=gen)
    var = torch.rand(c, generator=gen) + 0.5
    weight, bias = torch.rand(c, generator=gen) + 0.5, torch.rand(c, generator=gen)
    a = weight / (var + 1e-5).sqrt()
    b = bias - mean * a

    def contenders(x: torch.Tensor) -> dict:
        return {
            "bn": lambda: torch.batch_norm(x, weight, bias, mean, var, False, 0.1, 1e-5, False),
            "l2bn": lambda: l2bn_eval(x, mean, var, weight, bias),
            "stream": lambda: floor.stream(x, a, b),
            "two_pass": lambda: floor.two_pass(x, a, b),
            "pipelined": lambda: floor.pipelined(x, a, b),
        }

    def arranged(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x

    calls = contenders(arranged(torch.randn(shape)))
    before = None
    if cold is not None:
        if cold not in COLD:
            raise ValueError(f"cold must be one of {', '.join(COLD)}, got {cold!r}")
        # One call a sample, each after an eviction.
        times = 1
        buffer = eviction_buffer()
        small = contenders(arranged(torch.randn(2, *shape[1:])))

        def before() -> None:
            evict_caches(buffer)
            if cold == "data":
                for call in small.values():
                    call()

    else:
        # Each timed sample repeats a call enough times to last about 2 ms.
        times = max(1, int(2e-3 / max(time_interleaved(calls, 3)["bn"].median, 1e-7)))
    runs = {k: repeated(f, times) for k, f in calls.items()}
    with torch.no_grad():
        if alone:
            timings = {
                k: time_interleaved({k: run}, rounds, before=before)[k] for k, run in runs.items()
            }
        else:
            timings = time_interleaved(runs, rounds, before=before)
    return {k: t.median / times * 1e6 for k, t in timings.items()}


def shape_arg(text: str) -> tuple[int, ...]:
    """A 4-D shape as ``l2bn bench --shape`` reads it, else an argparse error."""
    try:
        shape = parse_shape(text)
    except ValueError:
        shape = ()
    if len(shape) != 4:
        raise argparse.ArgumentTypeError(
            f"expected NxCxHxW with positive sizes and N >= 2, e.g. 128x16x32x32; got {text!r}"
        )
    return shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's, every core)"
    )
    parser.add_argument("--isa", choices=("avx2",), default=None, help="run at AVX2")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (30, >= 1)")
    parser.add_argument(
        "--cold",
        nargs="?",
        const="all",
        choices=COLD,
        default=None,
        help="evict the caches (write 64 MB) before every call, each timed alone; 'data': "
        "then run each contender on a 2-sample input, so that only the tensors are cold",
    )
    parser.add_argument(
        "--alone",
        action="store_true",
        help="time each contender in its own run of rounds, back to back (warm caches)",
    )
    parser.add_argument(
        "--shape",
        action="append",
        type=shape_arg,
        help="NxCxHxW (repeatable; default: l2bn bench's 2d shapes)",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    try:
        env = machine.forced_environment(args.isa, None)
    except ValueError as error:  # an instruction set this processor or build lacks
        parser.error(str(error))
    if env is not None:
        sys.exit(subprocess.call([sys.executable, *sys.argv], env=env))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    floor = build(args.isa)
    print(
        f"{machine.processor()}; kernels {machine.kernel_isa()}, ATen "
        f"{machine.aten_capability()}, floor loops {args.isa or 'native'}; "
        f"{torch.get_num_threads()} thread(s); medians of {args.rounds} rounds"
        f"{', each contender alone' if args.alone else ''}"
        f"{f', caches evicted before each call ({args.cold})' if args.cold else ''}, us"
    )
    names = ("bn", "l2bn", "stream", "two_pass", "pipelined")
    print(f"{'shape':<18}" + "".join(f"{k:>10}" for k in names) + "  floor/bn  l2bn/bn  l2bn/floor")
    for shape in args.shape or list(FULL_SHAPES_2D):
        if layouts(shape) == ("contiguous",):
            print(
                f"(channels_last not measured for {'x'.join(map(str, shape))}: C is not a "
                f"multiple of {LANES})"
            )
        for layout in layouts(shape):
            text = "x".join(str(v) for v in shape) + (" CL" if layout == "channels_last" else "")
            t = measure(shape, floor, args.rounds, layout, args.alone, args.cold)
            low = min(t["two_pass"], t["pipelined"])
            print(
                f"{text:<18}"
                + "".join(f"{t[k]:>10.1f}" for k in names)
                + f"  {low / t['bn']:>8.2f} {t['l2bn'] / t['bn']:>8.2f} {t['l2bn'] / low:>11.2f}"
            )


if __name__ == "__main__":
    main()
