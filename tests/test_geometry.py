"""The toy geometry of Figures 2, 4 and 5 (section 3.2)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from l2bn.analysis import min_pairwise_angle, simulate_intra_class, simulate_layers
from l2bn.analysis.geometry import (
    FIGURE2_CENTERS,
    FIGURE5_DIRECTION,
    FIGURE5_NORMS,
    FIGURE5_OTHERS,
)


def test_min_pairwise_angle_known_answer() -> None:
    pts = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 3.0 * math.sqrt(3.0)]], dtype=torch.float64)
    # Angles: 0, 90, 120 degrees -> pairwise 90, 120, 30.
    assert min_pairwise_angle(pts) == pytest.approx(30.0, abs=1e-9)


def test_figure_2_and_4_numbers_of_the_paper() -> None:
    bn = simulate_layers(FIGURE2_CENTERS, 10, "bn")
    l2 = simulate_layers(FIGURE2_CENTERS, 10, "l2bn")
    assert len(bn.min_angles) == len(bn.points) == 11
    assert round(bn.min_angles[0], 2) == 24.77  # Fig. 2 (b)
    assert round(bn.min_angles[1], 2) == 35.81  # Fig. 2 (c)
    assert round(l2.min_angles[1], 2) == 37.00  # Fig. 4 (b)
    assert round(l2.min_angles[2], 2) == 52.12  # Fig. 4 (d)
    assert round(l2.min_angles[10], 2) == 119.22  # Fig. 4 (e)


def test_bn_enlarges_the_minimum_angle_once_then_never_changes_it() -> None:
    result = simulate_layers(FIGURE2_CENTERS, 10, "bn")
    assert result.min_angles[1] > result.min_angles[0] + 10
    for angle in result.min_angles[2:]:
        assert angle == pytest.approx(result.min_angles[1], abs=1e-3)  # eps=1e-5 only
    exact = simulate_layers(FIGURE2_CENTERS, 4, "bn", eps=1e-12)
    for angle in exact.min_angles[2:]:
        assert angle == pytest.approx(exact.min_angles[1], abs=1e-7)


@pytest.mark.parametrize("seed", range(2))
def test_bn_fixed_point_holds_for_any_points(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    result = simulate_layers(torch.randn(5, 3, generator=g), 3, "bn", eps=1e-12)
    for points in result.points[2:]:
        torch.testing.assert_close(points, result.points[1])


@pytest.mark.parametrize("seed", [None, 0, 1, 2])
def test_l2bn_keeps_enlarging_the_minimum_angle_towards_120(seed: int | None) -> None:
    if seed is None:
        points = torch.tensor(FIGURE2_CENTERS)
    else:
        points = torch.randn(3, 2, generator=torch.Generator().manual_seed(seed))
    result = simulate_layers(points, 40, "l2bn")
    angles = result.min_angles
    for before, after in itertools.pairwise(angles[:11]):
        assert after > before
    assert all(a <= 120.0 + 1e-9 for a in angles)
    assert angles[-1] == pytest.approx(120.0, abs=0.01)
    bn = simulate_layers(points, 1, "bn")  # constant after one layer (tested above)
    assert angles[-1] > bn.min_angles[-1]


def test_l2bn_layers_are_l2_normalization_then_batch_norm() -> None:
    points = torch.tensor(FIGURE2_CENTERS, dtype=torch.float64)
    result = simulate_layers(points, 2, "l2bn")
    reference = F.batch_norm(F.normalize(points, dim=1), None, None, training=True)
    torch.testing.assert_close(result.points[1], reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.normalized[0], F.normalize(points, dim=1))
    bn = simulate_layers(points, 2, "bn")
    assert not torch.allclose(result.points[1], bn.points[1], atol=1e-2)
    assert bn.normalized == []


def test_figure_5_same_direction_vectors_spread_after_bn_only() -> None:
    bn = simulate_intra_class(FIGURE5_DIRECTION, FIGURE5_NORMS, FIGURE5_OTHERS, "bn")
    l2 = simulate_intra_class(FIGURE5_DIRECTION, FIGURE5_NORMS, FIGURE5_OTHERS, "l2bn")
    assert bn.spread_before == pytest.approx(0.0, abs=1e-6)
    assert bn.spread_after > 10.0
    assert l2.spread_after == pytest.approx(0.0, abs=1e-6)
    assert bn.num_members == 2 and bn.points_after.shape == (5, 2)


def test_figure_5_needs_different_norms() -> None:
    # Same direction and the same norm: BN keeps them aligned as well (section 3.2).
    same = simulate_intra_class((1.0, 1.0), (1.5, 1.5), FIGURE5_OTHERS, "bn")
    assert same.spread_after == pytest.approx(0.0, abs=1e-6)


def test_bad_geometry_input() -> None:
    with pytest.raises(ValueError, match="unknown norm 'ln'; valid: bn, l2bn"):
        simulate_layers(FIGURE2_CENTERS, 3, "ln")
    with pytest.raises(ValueError, match="at least two rows"):
        simulate_layers([[1.0, 0.0]], 3, "bn")
    with pytest.raises(ValueError, match="num_layers"):
        simulate_layers(FIGURE2_CENTERS, -1, "bn")
    with pytest.raises(ValueError, match="2-D"):
        simulate_layers([1.0, 2.0], 3, "bn")
    with pytest.raises(ValueError, match="two positive"):
        simulate_intra_class((1.0, 0.0), (1.0,), FIGURE5_OTHERS, "bn")
    with pytest.raises(ValueError, match="zero row"):
        min_pairwise_angle(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))


@pytest.mark.parametrize("scale", [1e-170, 1e-300, 1e160, 1e300])
def test_min_pairwise_angle_does_not_depend_on_the_scale(scale) -> None:
    """Rows whose float64 norm would underflow or overflow keep their angles (45, 90, 135
    degrees apart), instead of becoming 'zero rows' or angles of 0."""
    pts = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    assert min_pairwise_angle(pts * scale) == pytest.approx(45.0, abs=1e-9)
    mixed = pts.clone()
    mixed[1] *= scale
    assert min_pairwise_angle(mixed) == pytest.approx(45.0, abs=1e-9)


@pytest.mark.parametrize("scale", [1e-13, 1e-200, 1e200])
def test_intra_class_direction_scale_does_not_matter(scale) -> None:
    """Figure 5's members have the norms asked for, whatever the direction's length: a
    direction of norm 1e-13 gave members 10 times shorter (F.normalize's eps)."""
    want = simulate_intra_class((1.0, 0.0), (0.8, 1.8), FIGURE5_OTHERS, "bn")
    got = simulate_intra_class((scale, 0.0), (0.8, 1.8), FIGURE5_OTHERS, "bn")
    torch.testing.assert_close(got.points_before, want.points_before)
    assert got.spread_after == pytest.approx(want.spread_after, abs=1e-9)


def test_intra_class_direction_must_be_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        simulate_intra_class((math.nan, 1.0), (0.8, 1.8), FIGURE5_OTHERS, "bn")


def test_intra_class_others_must_match_the_direction() -> None:
    """Three 2-D others with a 3-D direction were silently read as two 3-D rows."""
    with pytest.raises(ValueError, match="others"):
        simulate_intra_class((1.0, 0.0, 0.0), (0.8, 1.8), FIGURE5_OTHERS, "bn")
    with pytest.raises(ValueError, match="others"):
        simulate_intra_class((1.0, 0.0), (0.8, 1.8), ((0.6, 0.2, 1.4, 1.1),), "bn")
    flat = simulate_intra_class((1.0, 0.0), (0.8, 1.8), (0.6, 0.2), "bn")  # one row
    assert flat.points_before.shape == (3, 2)
    alone = simulate_intra_class((1.0, 0.0), (0.8, 1.8), (), "bn")
    assert alone.points_before.shape == (2, 2)


def test_python_sequences_are_read_in_float64() -> None:
    """Points given as Python numbers are not rounded through float32 (the default
    tensor dtype) before the float64 simulation."""
    pts = [[1.0, 1.0], [1.0, 1.0000001], [-1.0, 0.5]]
    exact = torch.tensor(pts, dtype=torch.float64)
    assert min_pairwise_angle(pts) == min_pairwise_angle(exact)
    assert min_pairwise_angle([[1e-50, 0.0], [0.0, 1.0]]) == pytest.approx(90.0, abs=1e-12)
    got = simulate_layers(FIGURE2_CENTERS, 3, "l2bn")
    want = simulate_layers(torch.tensor(FIGURE2_CENTERS, dtype=torch.float64), 3, "l2bn")
    assert got.points[0].tolist() == [list(p) for p in FIGURE2_CENTERS]
    assert got.min_angles == want.min_angles


@pytest.mark.parametrize("norm", ["bn", "l2bn"])
def test_points_whose_statistics_overflow_are_refused(norm) -> None:
    """A batch variance or row norm past float64's range made BN output zeros (minimum
    angle 0.00 for every BN layer) and L2BN a wrong angle; it is refused instead."""
    with pytest.raises(ValueError, match="overflow"):
        simulate_layers([[1e300, 1.0], [1.0, 0.0], [0.0, 1.0]], 2, norm)
    with pytest.raises(ValueError, match="overflow"):
        simulate_layers(torch.tensor([[math.nan, 1.0], [1.0, 0.0]]), 2, norm)
    big = simulate_layers([[1e150, 0.0], [1e150, 1e150], [-1e150, 2e150]], 2, norm)
    small = simulate_layers([[1.0, 0.0], [1.0, 1.0], [-1.0, 2.0]], 2, norm)
    assert big.min_angles == pytest.approx(small.min_angles, abs=1e-3)  # BN eps: 1e-5
