"""``l2bn geometry``: the minimum-angle table and Figures 2, 4 and 5 of section 3.2."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

from l2bn._files import make_writable_dir
from l2bn.analysis.geometry import (
    FIGURE2_CENTERS,
    FIGURE5_DIRECTION,
    FIGURE5_NORMS,
    FIGURE5_OTHERS,
    GeometryResult,
    simulate_intra_class,
    simulate_layers,
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--layers", type=int, default=10, help="identity layers to simulate (default: 10)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("geometry-figures"),
        help="directory for figure2.png, figure4.png, figure5.png (default: ./geometry-figures)",
    )
    parser.add_argument(
        "--points",
        default=None,
        metavar="X,Y;X,Y;...",
        help="2-D class centers to use instead of the Figure 2 example",
    )
    parser.add_argument("--no-figures", action="store_true", help="print the table only")


def run(args: argparse.Namespace) -> int:
    """The table, then the figures. A bad argument (layers, points, output folder) is one
    line ``l2bn geometry: error: ...`` with exit code 2, found before anything is drawn;
    failing to write a figure is one line with exit code 1. ``L2BN_DEBUG=1`` shows the
    traceback instead."""
    debug = os.environ.get("L2BN_DEBUG", "") not in ("", "0")
    try:
        if args.layers < 1:
            raise ValueError(f"--layers must be >= 1, got {args.layers}")
        points = _parse_points(args.points) if args.points is not None else FIGURE2_CENTERS
        bn, l2bn = _simulate(points, args.layers)
        if not args.no_figures:
            _check_out(args.out)
    except ValueError as err:
        if debug:
            raise
        print(f"l2bn geometry: error: {err}", file=sys.stderr)
        return 2
    print(format_table(bn, l2bn))
    intra_bn = simulate_intra_class(FIGURE5_DIRECTION, FIGURE5_NORMS, FIGURE5_OTHERS, "bn")
    intra_l2 = simulate_intra_class(FIGURE5_DIRECTION, FIGURE5_NORMS, FIGURE5_OTHERS, "l2bn")
    print(
        f"\nFigure 5: angle between b1 and b2 (same direction, norms "
        f"{FIGURE5_NORMS[0]} and {FIGURE5_NORMS[1]}): before {intra_bn.spread_before:.2f}, "
        f"after BN {intra_bn.spread_after:.2f}, after L2BN {intra_l2.spread_after:.2f} degrees"
    )
    if not args.no_figures:
        from l2bn.analysis import plots

        try:
            written = [
                plots.figure2(bn, args.out / "figure2.png"),
                plots.figure4(bn, l2bn, args.out / "figure4.png"),
                plots.figure5(intra_bn, intra_l2, args.out / "figure5.png"),
            ]
        except OSError as err:
            if debug:
                raise
            print(
                f"l2bn geometry: error: writing the figures to {args.out}: {err}", file=sys.stderr
            )
            return 1
        print("\nwrote " + ", ".join(str(p) for p in written))
    return 0


def _simulate(points: Any, layers: int) -> tuple[GeometryResult, GeometryResult]:
    """BN and L2BN runs of ``points``; ValueError when an angle is undefined or not finite."""
    try:
        bn = simulate_layers(points, layers, "bn")
        l2bn = simulate_layers(points, layers, "l2bn")
    except ValueError as err:
        if "overflow" in str(err):
            raise ValueError(
                "--points: the angles are not finite (are the values too large?)"
            ) from None
        if "zero row" not in str(err):
            raise
        raise ValueError(
            "--points: a point becomes the zero vector after a normalization layer (it "
            "equals the mean of the points), and a zero vector has no angle"
        ) from None
    if not all(math.isfinite(a) for a in bn.min_angles + l2bn.min_angles):
        raise ValueError("--points: the angles are not finite (are the values too large?)")
    return bn, l2bn


def _check_out(out: Path) -> None:
    """``out`` is a folder the figures can be written to: created if missing, and a probe
    file written and removed in it (a permission check alone would pass for root)."""
    try:
        make_writable_dir(out)
    except OSError as err:
        reason = err.strerror or str(err)
        if isinstance(err, FileExistsError) or (out.exists() and not out.is_dir()):
            reason = "a file of that name exists"
        raise ValueError(f"--out {out}: cannot write the figures there ({reason})") from None


def format_table(bn: GeometryResult, l2bn: GeometryResult) -> str:
    """The per-layer minimum angle between class centers, BN vs L2BN (degrees)."""
    lines = [
        "Minimum angle between class centers (degrees), identity layers + norm (no affine)",
        f"{'layer':>5}  {'BN':>8}  {'L2BN':>8}",
    ]
    for layer, (a, b) in enumerate(zip(bn.min_angles, l2bn.min_angles, strict=True)):
        lines.append(f"{layer:>5}  {a:>8.2f}  {b:>8.2f}")
    return "\n".join(lines)


def _parse_points(text: str) -> list[list[float]]:
    """``x,y;x,y;...`` as rows; ValueError unless at least two finite, non-zero 2-D points."""
    try:
        rows = [[float(v) for v in row.split(",")] for row in text.split(";") if row.strip()]
    except ValueError as err:
        raise ValueError(f"--points must look like 'x,y;x,y;...': {err}") from None
    if len(rows) < 2 or any(len(r) != 2 for r in rows):
        raise ValueError(f"--points {text!r}: give at least two 2-D points, 'x,y;x,y;...'")
    for x, y in rows:
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"--points: the coordinates must be finite, got ({x}, {y})")
        if x == 0 and y == 0:
            raise ValueError("--points: the point (0, 0) has no direction, so no angle")
    return rows
