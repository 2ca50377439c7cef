"""Figures 2, 4 and 5 in the paper's style (matplotlib, imported when a figure is drawn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from l2bn.analysis.geometry import GeometryResult, IntraClassResult

COLORS = ("tab:red", "tab:green", "tab:blue", "tab:orange", "tab:purple", "tab:brown")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_vectors(
    ax: Any,
    points: Tensor,
    title: str,
    colors: tuple[str, ...] = COLORS,
    names: tuple[str, ...] = (),
) -> None:
    """Arrows from the origin to each 2-D row (first rows on top), optionally named."""
    p = points.detach().cpu().double()
    reach = max(1.0, float(p.abs().max())) * 1.15
    rows = list(enumerate(p.tolist()))
    for i, (x, y) in reversed(rows):
        ax.annotate(
            "",
            xy=(x, y),
            xytext=(0.0, 0.0),
            arrowprops={"arrowstyle": "-|>", "color": colors[i % len(colors)], "lw": 2},
        )
    labels: dict[tuple[float, float], list[str]] = {}
    for name, (_, (x, y)) in zip(names, rows, strict=False):
        labels.setdefault((round(x, 6), round(y, 6)), []).append(name)
    for (x, y), same in labels.items():
        text = " = ".join(same)
        ax.annotate(text, xy=(x, y), xytext=(4, -10), textcoords="offset points", fontsize=8)
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.axvline(0.0, color="0.6", lw=0.8)
    ax.set_xlim(-reach, reach)
    ax.set_ylim(-reach, reach)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)


def figure2(bn: GeometryResult, path: Path) -> Path:
    """Figure 2 (b), (c): class centers before and after BN layers."""
    plt = _pyplot()
    last = len(bn.points) - 1
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    _draw_vectors(axes[0], bn.points[0], f"(b) class centers\nmin angle {bn.min_angles[0]:.2f}°")
    _draw_vectors(
        axes[1], bn.points[1], f"(c) after BN, layer 1\nmin angle {bn.min_angles[1]:.2f}°"
    )
    _draw_vectors(
        axes[2], bn.points[last], f"after BN, layer {last}\nmin angle {bn.min_angles[last]:.2f}°"
    )
    fig.suptitle("Figure 2: BN enlarges the minimum angle once", fontsize=10)
    return _save(fig, path)


def figure4(bn: GeometryResult, l2bn: GeometryResult, path: Path) -> Path:
    """Figure 4 (a)-(f): class centers through L2BN layers and the minimum-angle curves."""
    plt = _pyplot()
    last = len(l2bn.points) - 1
    fig, axes = plt.subplots(2, 3, figsize=(10, 7))
    panels = [
        (l2bn.normalized[0], "(a) layer 1, after l2 norm", l2bn.min_angles[0]),
        (l2bn.points[1], "(b) layer 1, after BN", l2bn.min_angles[1]),
    ]
    if last >= 2:
        panels += [
            (l2bn.normalized[1], "(c) layer 2, after l2 norm", l2bn.min_angles[1]),
            (l2bn.points[2], "(d) layer 2, after BN", l2bn.min_angles[2]),
        ]
    panels.append((l2bn.points[last], f"(e) after L2BN, layer {last}", l2bn.min_angles[last]))
    for ax, (points, title, angle) in zip(axes.flat, panels, strict=False):
        _draw_vectors(ax, points, f"{title}\nmin angle {angle:.2f}°")
    curve = axes.flat[5]
    layers = list(range(len(l2bn.min_angles)))
    curve.plot(layers, bn.min_angles, "o-", label="BN")
    curve.plot(layers, l2bn.min_angles, "s-", label="L2BN")
    curve.set_xlabel("layer")
    curve.set_ylabel("minimum angle (degrees)")
    curve.set_title("(f) minimum angle per layer", fontsize=9)
    curve.legend()
    for ax in list(axes.flat)[len(panels) : 5]:
        ax.axis("off")
    fig.suptitle("Figure 4: L2BN keeps enlarging the minimum angle", fontsize=10)
    return _save(fig, path)


def figure5(bn: IntraClassResult, l2bn: IntraClassResult, path: Path) -> Path:
    """Figure 5 (a), (b): same-direction vectors of different norms after BN and L2BN."""
    plt = _pyplot()
    k = bn.num_members
    members = ("tab:red", "darkred")
    colors = tuple(members[i % 2] for i in range(k)) + ("0.55",) * (bn.points_before.shape[0] - k)
    names = tuple(f"b{i + 1}" for i in range(k))
    panels = [
        (bn.points_before, "before: b1, b2 (red) aligned,\nother classes grey"),
        (bn.points_after, f"(a) after BN\nangle(b1, b2) = {bn.spread_after:.2f}°"),
        (l2bn.points_after, f"(b) after L2BN\nangle(b1, b2) = {l2bn.spread_after:.2f}°"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    for ax, (points, title) in zip(axes, panels, strict=True):
        _draw_vectors(ax, points, title, colors, names)
    fig.suptitle("Figure 5: BN spreads same-class vectors, L2BN keeps them aligned", fontsize=10)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
