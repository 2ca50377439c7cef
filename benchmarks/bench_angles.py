"""Time ``l2bn.analysis.angle_metrics`` on 50,000 x 2,048 float32 features (issue 4).

Usage: ``.venv/bin/python benchmarks/bench_angles.py [--samples N] [--dim D] [--classes C]
[--threads T]``.
Prints the best of ``--repeats`` timings (target on a 2-core CPU: under 2 s).
"""

from __future__ import annotations

import argparse
import time

import torch

from l2bn.analysis import angle_metrics


def make_features(samples: int, dim: int, classes: int, seed: int = 0):
    """Non-negative (post-ReLU-like) features with one mean direction per class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (samples,), generator=g)
    means = torch.randn(classes, dim, generator=g)
    features = torch.randn(samples, dim, generator=g).add_(means[labels]).relu_()
    return features, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=2_048)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    features, labels = make_features(args.samples, args.dim, args.classes)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        metrics = angle_metrics(features, labels, num_classes=args.classes)
        times.append(time.perf_counter() - start)
    shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    print(
        f"angle_metrics {args.samples} x {args.dim} float32, {args.classes} classes, "
        f"{torch.get_num_threads()} threads: best {min(times):.3f} s "
        f"(all: {', '.join(f'{t:.3f}' for t in times)}); {shown}"
    )


if __name__ == "__main__":
    main()
