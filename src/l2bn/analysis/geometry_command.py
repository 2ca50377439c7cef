"""``l2bn geometry``: the minimum-angle table and Figures 2, 4 and 5 of section 3.2."""

from __future__ import annotations

import argparse
from pathlib import Path

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
        type=_parse_points,
        default=None,
        metavar="X,Y;X,Y;...",
        help="2-D class centers to use instead of the Figure 2 example",
    )
    parser.add_argument("--no-figures", action="store_true", help="print the table only")


def run(args: argparse.Namespace) -> int:
    if args.layers < 1:
        raise ValueError(f"l2bn geometry: --layers must be >= 1, got {args.layers}")
    points = args.points if args.points is not None else FIGURE2_CENTERS
    bn = simulate_layers(points, args.layers, "bn")
    l2bn = simulate_layers(points, args.layers, "l2bn")
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

        written = [
            plots.figure2(bn, args.out / "figure2.png"),
            plots.figure4(bn, l2bn, args.out / "figure4.png"),
            plots.figure5(intra_bn, intra_l2, args.out / "figure5.png"),
        ]
        print("\nwrote " + ", ".join(str(p) for p in written))
    return 0


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
    try:
        rows = [[float(v) for v in row.split(",")] for row in text.split(";") if row.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"points must look like 'x,y;x,y;...': {err}") from None
    if len(rows) < 2 or any(len(r) != 2 for r in rows):
        raise argparse.ArgumentTypeError("points: give at least two 2-D points, 'x,y;x,y;...'")
    return rows
