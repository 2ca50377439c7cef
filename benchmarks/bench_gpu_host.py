"""Host time of L2BN's Triton path on a GPU: BatchNorm, L2BN through the registered
operators, and L2BN calling the operators' bodies directly (the eager path).

On a GPU a small L2BN call costs far more host time (Python, dispatcher, allocations,
Triton's launcher) than kernel time, so the queue never fills and the host sets the pace.
For each case and mode (training forward, forward+backward, eval forward) this prints, in
microseconds per call, two medians for each contender:
  - host: the call alone on the host clock, the queue drained only every 10 calls, so
    that the figure is what the host spends to issue the work;
  - synced: the call and a ``torch.cuda.synchronize()``.
``ops`` forces every call through the operators (``function._direct`` returns False: the
path before the direct calls existed), ``direct`` is the default eager path. The three
contenders run one after another, twice, in one process; each cell is the lower of its two
medians. ``--steps`` also times an SGD step of ResNet-20 (batch 128) and ResNet-50 (batch
64, bf16 autocast, channels_last) with BatchNorm and with L2BN on either path
(``l2bn.bench.gpu.training_step_ratio``, 12 rounds), twice.

Without CUDA it runs the kernels in Triton's interpreter on CPU (``TRITON_INTERPRET=1``
must be set before Python starts) on a tiny input: a check that the command runs, not a
measurement (2 calls a median unless ``--reps`` says otherwise).

Usage: python benchmarks/bench_gpu_host.py [--reps 200] [--shape 128x64x8x8 ...] [--steps]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch

import l2bn
from l2bn.bench import gpu
from l2bn.bench.contenders import build, parse_shape

DEFAULT_SHAPES = ("128x64x8x8", "128x16x32x32", "256x2048x7x7", "1024x512")


def host_us(fn: Callable[[], object], reps: int, sync: Callable[[], None]) -> float:
    """Median host time of ``fn`` (us), draining the queue every 10 calls."""
    for _ in range(max(reps // 10, 2)):
        fn()
    sync()
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if i % 10 == 9:
            sync()
    sync()
    return statistics.median(times) * 1e6


def synced_us(fn: Callable[[], object], reps: int, sync: Callable[[], None]) -> float:
    """Median time of ``fn`` and a synchronization (us)."""
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


# This script's mode labels, and the modes of l2bn.bench.
MODES = {"fwd": "train_fwd", "fwd+bwd": "train_fwd_bwd", "eval": "eval_fwd"}


@contextlib.contextmanager
def operators_forced(force: bool) -> Iterator[None]:
    """While in this block, every L2BN call on the Triton path goes through the registered
    operators (``function._direct`` answers False) when ``force``; else the default."""
    from l2bn._impl.triton import function

    direct = function._direct
    if force:
        function._direct = lambda *tensors: False
    try:
        yield
    finally:
        function._direct = direct


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="calls per median (>= 1; default 200, 2 without CUDA)",
    )
    parser.add_argument("--shape", action="append", help="NxC[xL|xHxW] (repeatable)")
    parser.add_argument("--steps", action="store_true", help="also the training steps")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if args.reps is None:
        args.reps = 200 if cuda else 2
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    if args.steps and not cuda:
        parser.error("--steps needs CUDA (the training steps are not run in the interpreter)")
    device = "cuda" if cuda else "cpu"
    from l2bn._impl import triton as triton_backend

    if triton_backend.UNAVAILABLE_REASON is not None:
        parser.error(f"the Triton backend is unavailable: {triton_backend.UNAVAILABLE_REASON}")
    try:
        shapes = [parse_shape(s) for s in (args.shape or (DEFAULT_SHAPES if cuda else ["4x8x3x3"]))]
    except ValueError as exc:
        parser.error(str(exc))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    paths = {"bn": False, "ops": True, "direct": False}  # whether the operators are forced
    name = torch.cuda.get_device_name() if cuda else "CPU, Triton's interpreter"
    print(f"bench_gpu_host: {name}, torch {torch.__version__}, {args.reps} calls a median")
    print(f"{'case':<16}{'mode':<9}" + "".join(f"{k + ' host | synced us':>28}" for k in paths))
    with l2bn.backends.prefer("triton"):
        for shape in shapes:
            bn, l2 = (build(name, shape[1], len(shape)).to(device) for name in ("bn", "l2bn"))
            modules = {"bn": bn, "ops": l2, "direct": l2}
            x = torch.randn(shape, device=device, requires_grad=True)
            dy = torch.randn(shape, device=device)
            for label, mode in MODES.items():
                for module in (bn, l2):
                    module.train(mode != "eval_fwd")
                cells: dict[str, list[tuple[float, float]]] = {k: [] for k in paths}
                for _ in range(2):
                    for name, force in paths.items():
                        fn = gpu.mode_call(
                            modules[name], mode, x, dy, contextlib.nullcontext, False
                        )
                        with operators_forced(force):
                            cells[name].append(
                                (host_us(fn, args.reps, sync), synced_us(fn, args.reps, sync))
                            )
                row = "".join(
                    f"{min(h for h, _ in v):>16.1f} | {min(s for _, s in v):>9.1f}"
                    for v in cells.values()
                )
                print(f"{'x'.join(map(str, shape)):<16}{label:<9}{row}", flush=True)
        if args.steps:
            specs = (
                ("resnet20", 128, 32, 100, False, False),
                ("resnet50", 64, 224, 1000, True, True),
            )
            for _ in range(2):
                for label in ("ops", "direct"):
                    with operators_forced(paths[label]):
                        for spec in specs:
                            r = gpu.training_step_ratio(*spec, 12, torch.device("cuda"))
                            print(
                                f"SGD step, L2BN via {label:<6} {spec[0]}: BatchNorm "
                                f"{r['bn_median_ms']:.2f} ms, L2BN {r['l2bn_median_ms']:.2f} ms, "
                                f"ratio {r['ratio']:.3f}",
                                flush=True,
                            )


if __name__ == "__main__":
    main()
