"""The toy geometry of section 3.2: Figures 2, 4 (inter-class) and 5 (intra-class).

Points (class centers or samples, one per row) pass through identity layers, each
followed by BN or L2BN without affine parameters (gamma = 1, beta = 0), with batch
statistics, as in the paper's analysis. Everything runs in float64.

* Figure 2: after one BN the rows have zero mean and unit variance per coordinate, so
  further BN layers change nothing: the minimum pairwise angle grows once, then stays.
* Figure 4: L2BN re-normalizes the rows' norms in every layer, which breaks that fixed
  point, so the minimum angle keeps growing towards the largest possible value (120
  degrees for three points in the plane).
* Figure 5: vectors of one direction but different norms are spread apart by BN and stay
  aligned after L2BN.

The paper's claims are about its example; in general (our runs, 2-D points): BN can also
shrink the minimum angle in its one step; L2BN reaches the maximum for three points (120)
and four points (90), but five points can settle below it (e.g. 46.6 instead of 72
degrees after 300 layers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from l2bn.analysis._core import unit_vector_angles
from l2bn.functional import l2_batch_norm

NORMS = ("bn", "l2bn")

FIGURE2_CENTERS = ((0.38980, -0.31856), (0.61587, -0.15913), (-0.25885, 1.0))
"""Three 2-D class centers that reproduce the numbers of Figures 2 and 4: minimum angle
24.77 degrees, 35.81 after BN (any number of layers), 37.00 / 52.12 / 119.22 after 1 / 2 /
10 L2BN layers. Found by fitting those five numbers; the paper does not list its points."""

FIGURE5_DIRECTION = (math.cos(math.radians(75.0)), math.sin(math.radians(75.0)))
FIGURE5_NORMS = (0.8, 1.8)
FIGURE5_OTHERS = ((0.6, 0.2), (1.4, 1.1), (1.4, -0.8))
"""Figure 5's example: two same-class vectors b1, b2 along 75 degrees with norms 0.8 and
1.8, in a batch with three vectors of other classes (one BN layer spreads b1 and b2 by
about 53 degrees)."""


@dataclass(frozen=True)
class GeometryResult:
    """Outcome of :func:`simulate_layers`.

    ``min_angles[k]`` and ``points[k]`` describe the rows after ``k`` layers (``k = 0``:
    the input), so both have ``num_layers + 1`` entries. ``norm`` is the simulated norm;
    for L2BN, ``normalized[k]`` holds the unit rows entering the BN of layer ``k + 1``
    (Figure 4 (a), (c)); it is empty for BN.
    """

    min_angles: list[float]
    points: list[Tensor]
    norm: str = ""
    normalized: list[Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class IntraClassResult:
    """Outcome of :func:`simulate_intra_class` (Figure 5).

    The first ``num_members`` rows of ``points_before`` / ``points_after`` are the
    same-class vectors; ``spread_*`` is the largest angle between two of them (degrees).
    """

    norm: str
    num_members: int
    spread_before: float
    spread_after: float
    points_before: Tensor
    points_after: Tensor


def pairwise_angles(points: Tensor) -> Tensor:
    """``(N, N)`` angles in degrees between the rows of ``points`` (float64).

    Each row is divided by its largest absolute value first (angles are scale-invariant),
    so rows of any finite scale (1e-300, 1e300) keep their angles; a NaN or inf value
    gives NaN angles. Raises ValueError for an all-zero row.
    """
    p = _peak_scaled(_as_rows(points, "points"))
    norms = torch.linalg.vector_norm(p, dim=1)
    if bool((norms == 0).any()):
        raise ValueError("l2bn.analysis: a zero row has no direction, its angles are undefined")
    unit = p / norms.unsqueeze(1)
    return torch.rad2deg(unit_vector_angles(unit.unsqueeze(1), unit.unsqueeze(0)))


def min_pairwise_angle(points: Tensor) -> float:
    """The smallest angle, in degrees, between two rows of ``points`` (Figures 2 and 4)."""
    angles = pairwise_angles(points)
    if angles.shape[0] < 2:
        raise ValueError("l2bn.analysis: the minimum angle needs at least two rows")
    angles.fill_diagonal_(math.inf)
    return float(angles.min())


def normalize_layer(points: Tensor, norm: str, eps: float = 1e-5) -> Tensor:
    """One identity layer followed by BN or L2BN without affine, with batch statistics."""
    _check_norm(norm)
    if norm == "bn":
        return F.batch_norm(points, None, None, training=True, eps=eps)
    return l2_batch_norm(points, None, None, training=True, eps=eps)


def simulate_layers(
    points: Tensor | Sequence[Sequence[float]],
    num_layers: int,
    norm: str = "bn",
    eps: float = 1e-5,
) -> GeometryResult:
    """Pass ``points`` (one row per class center or sample) through ``num_layers`` layers.

    Each layer is an identity mapping followed by ``norm`` ("bn" or "l2bn") without
    affine parameters (Figures 2 and 4). Returns the minimum pairwise angle and the points
    before the first layer and after each layer.
    """
    _check_norm(norm)
    if not isinstance(num_layers, int) or num_layers < 0:
        raise ValueError(f"l2bn.analysis: num_layers must be an int >= 0, got {num_layers!r}")
    p = _as_rows(points, "points")
    if p.shape[0] < 2:
        raise ValueError("l2bn.analysis: batch normalization needs at least two rows")
    _check_statistics(p)
    history, normalized = [p], []
    for _ in range(num_layers):
        if norm == "l2bn":
            normalized.append(F.normalize(history[-1], dim=1))
        history.append(normalize_layer(history[-1], norm, eps))
    return GeometryResult(
        min_angles=[min_pairwise_angle(q) for q in history],
        points=history,
        norm=norm,
        normalized=normalized,
    )


def simulate_intra_class(
    direction: Sequence[float] | Tensor,
    norms: Sequence[float] | Tensor,
    others: Sequence[Sequence[float]] | Tensor = (),
    norm: str = "bn",
    eps: float = 1e-5,
) -> IntraClassResult:
    """Figure 5: same-direction vectors of different norms through one BN or L2BN layer.

    The batch holds ``norms[i] * u`` with ``u`` the unit vector of ``direction`` (any
    finite, non-zero length; the class members, first rows) followed by the rows of
    ``others`` (other classes). After BN the members point different ways; after L2BN
    they stay aligned, since l2 normalization makes them identical. Raises ValueError
    for a zero or non-finite ``direction`` or fewer than two positive ``norms``.
    """
    _check_norm(norm)
    d = torch.as_tensor(direction, dtype=torch.float64).flatten()
    scales = torch.as_tensor(norms, dtype=torch.float64).flatten()
    if scales.numel() < 2 or bool((scales <= 0).any()):
        raise ValueError("l2bn.analysis: norms must hold at least two positive values")
    d = _peak_scaled(d.unsqueeze(0)).squeeze(0)
    length = float(torch.linalg.vector_norm(d))
    if not math.isfinite(length) or length == 0.0:
        raise ValueError("l2bn.analysis: direction must be a finite, non-zero vector")
    members = scales.unsqueeze(1) * (d / length).unsqueeze(0)
    rest = _other_rows(others, d.numel())
    before = torch.cat([members, rest])
    after = normalize_layer(before, norm, eps)
    k = members.shape[0]
    return IntraClassResult(
        norm=norm,
        num_members=k,
        spread_before=float(pairwise_angles(before[:k]).max()),
        spread_after=float(pairwise_angles(after[:k]).max()),
        points_before=before,
        points_after=after,
    )


def _as_rows(points: Tensor | Sequence[Sequence[float]], name: str) -> Tensor:
    """``points`` as a float64 ``(N, D)`` tensor; Python numbers are read in float64
    directly (not through the default float32 dtype). Raises ValueError unless 2-D."""
    p = torch.as_tensor(points, dtype=torch.float64)
    if p.dim() != 2:
        raise ValueError(f"l2bn.analysis: {name} must be 2-D (rows, dims), got {tuple(p.shape)}")
    return p


def _check_statistics(p: Tensor) -> None:
    """Raise ValueError unless the batch variance and the row norms of ``p`` ``(N, D)``
    are finite in float64: past ~1e154 they overflow, and BN would output zeros (angle 0)
    or L2BN divide by an infinite norm, silently. Later layers see normalized rows."""
    variance = p.var(dim=0, unbiased=False)
    norms = torch.linalg.vector_norm(p, dim=1)
    if not (bool(torch.isfinite(variance).all()) and bool(torch.isfinite(norms).all())):
        raise ValueError(
            "l2bn.analysis: the points' batch variance or norms overflow float64 "
            "(values not finite, or above about 1e150)"
        )


def _other_rows(others: Sequence[Sequence[float]] | Tensor, dim: int) -> Tensor:
    """``others`` as float64 rows ``(M, dim)``: empty, one point ``(dim,)`` or ``(M, dim)``.

    Raises ValueError for points of another dimension than the direction's ``dim``.
    """
    rest = torch.as_tensor(others, dtype=torch.float64)
    if rest.numel() == 0:
        return rest.reshape(0, dim)
    if rest.dim() == 1:
        rest = rest.unsqueeze(0)
    if rest.dim() != 2 or rest.shape[1] != dim:
        raise ValueError(
            f"l2bn.analysis: others must be {dim}-D points like the direction, "
            f"got shape {tuple(rest.shape)}"
        )
    return rest


def _peak_scaled(rows: Tensor) -> Tensor:
    """``rows`` ``(N, D)`` each divided by its largest absolute value (all-zero rows kept),
    so that their norms neither overflow nor underflow; directions are unchanged, NaN and
    inf give NaN rows."""
    if rows.shape[1] == 0:
        return rows
    peak = rows.abs().amax(dim=1, keepdim=True)
    return rows / torch.where(peak > 0, peak, 1.0)


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"l2bn.analysis: unknown norm {norm!r}; valid: {', '.join(NORMS)}")
