"""Time L2BN against native BatchNorm and the naive composite (same as ``l2bn bench``).

Usage: python benchmarks/bench_norm.py [--quick] [--threads 2] [--json] [--output FILE]
"""

from __future__ import annotations

import argparse
import sys

from l2bn.bench import command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_norm", description=command.__doc__)
    command.configure(parser)
    return command.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
