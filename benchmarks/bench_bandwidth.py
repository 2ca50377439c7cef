"""Read bandwidth of one thread at each level of the memory hierarchy, as ``torch.sum``
sees it: the median time of summing a float32 buffer of each size, kept hot by repetition
(16 kB-768 kB: L1/L2; 8 MB: L3; 64 MB: memory on the machines this project runs on).

Used by docs/performance.md ("What is not at 1.0x, and why") to put a bandwidth on the
second read of each sample that eval-mode L2BN makes. ``python benchmarks/bench_bandwidth.py
[--threads N]``; each line gives the size, the median time of one sum and bytes / time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

SIZES_KB = (16, 64, 256, 512, 768, 8192, 65536)


def median_seconds(buffer: torch.Tensor, repeats: int, rounds: int = 30) -> float:
    """Median over ``rounds`` of the mean time of ``repeats`` back-to-back sums."""
    for _ in range(10):
        buffer.sum()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            buffer.sum()
        samples.append((time.perf_counter() - start) / repeats)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32 torch.sum")
    for kb in SIZES_KB:
        buffer = torch.randn(kb * 1024 // 4)
        seconds = median_seconds(buffer, repeats=max(20, 20000 // kb))
        print(f"{kb:>6} kB  {seconds * 1e6:>9.2f} us  {kb * 1024 / seconds / 1e9:>6.1f} GB/s")


if __name__ == "__main__":
    main()
