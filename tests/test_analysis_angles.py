"""Intra-angle, inter-angle and IIR (supplement eqs. 1-3, paper eq. 4) on known answers."""

from __future__ import annotations

import math

import pytest
import torch

from l2bn.analysis import _core, angle_metrics, class_centers, train_test_metrics


def at_angles(degrees: list[float], norms: list[float] | None = None) -> torch.Tensor:
    """2-D float64 vectors at the given polar angles (and norms)."""
    norms = norms or [1.0] * len(degrees)
    rad = torch.tensor(degrees, dtype=torch.float64).deg2rad()
    r = torch.tensor(norms, dtype=torch.float64)
    return torch.stack([r * rad.cos(), r * rad.sin()], dim=1)


# Three classes around 0, 90 and 200 degrees, two samples each at +-10, +-20, +-30.
KNOWN_DEGREES = [-10.0, 10.0, 70.0, 110.0, 170.0, 230.0]
KNOWN_NORMS = [0.5, 3.0, 1.0, 7.0, 2.0, 0.1]  # norms must not matter
KNOWN_LABELS = torch.tensor([0, 0, 1, 1, 2, 2])
KNOWN_INTRA = (2 * 10 + 2 * 20 + 2 * 30) / 6  # 20 degrees
# Center angles 0-90: 90, 90-200: 110, 0-200: 160; nearest: 90, 90, 110.
KNOWN_INTER = (90 + 90 + 110) / 3


def test_known_angles_give_hand_computed_metrics() -> None:
    x = at_angles(KNOWN_DEGREES, KNOWN_NORMS)
    m = angle_metrics(x, KNOWN_LABELS)
    assert m["intra_angle"] == pytest.approx(KNOWN_INTRA, abs=1e-9)
    assert m["inter_angle"] == pytest.approx(KNOWN_INTER, abs=1e-9)
    assert m["iir"] == pytest.approx(KNOWN_INTRA / KNOWN_INTER, abs=1e-12)
    assert set(m) == {"intra_angle", "inter_angle", "iir"}
    assert all(isinstance(v, float) for v in m.values())


def test_intra_angle_averages_over_samples_not_classes() -> None:
    # Class 0: four samples at 0, +12, -12, 0 degrees of its center; class 1: one sample.
    x = at_angles([0.0, 12.0, -12.0, 0.0, 90.0])
    y = torch.tensor([0, 0, 0, 0, 1])
    m = angle_metrics(x, y)
    assert m["intra_angle"] == pytest.approx(24.0 / 5, abs=1e-9)  # class mean would be 3
    assert m["inter_angle"] == pytest.approx(90.0, abs=1e-9)


def test_rotated_high_dimensional_embedding_keeps_the_angles() -> None:
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    x2 = at_angles(KNOWN_DEGREES, KNOWN_NORMS)
    x = torch.cat([x2, torch.zeros(6, 38, dtype=torch.float64)], dim=1) @ q
    m64 = angle_metrics(x, KNOWN_LABELS)
    m32 = angle_metrics(x.float(), KNOWN_LABELS)
    for m, tol in ((m64, 1e-9), (m32, 1e-4)):
        assert m["intra_angle"] == pytest.approx(KNOWN_INTRA, abs=tol)
        assert m["inter_angle"] == pytest.approx(KNOWN_INTER, abs=tol)


def test_class_centers_are_means_of_unit_vectors() -> None:
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, -5.0]], dtype=torch.float64)
    c = class_centers(x, torch.tensor([0, 0, 2]), num_classes=3)
    assert c.shape == (3, 2) and c.dtype == torch.float64
    torch.testing.assert_close(c[0], torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(c[2], torch.tensor([0.0, -1.0], dtype=torch.float64))
    assert torch.isnan(c[1]).all()  # class 1 has no sample


def test_classes_without_samples_are_left_out_of_the_inter_angle() -> None:
    x = at_angles(KNOWN_DEGREES, KNOWN_NORMS)
    with_empty = angle_metrics(x, KNOWN_LABELS, num_classes=5)
    assert with_empty == pytest.approx(angle_metrics(x, KNOWN_LABELS))


def test_given_centers_are_used_for_intra_and_inter() -> None:
    centers = at_angles([0.0, 90.0, 180.0])
    test = at_angles([30.0, 80.0, 100.0])  # class 0 at 30 of its center, class 1 at 10 and 10
    y = torch.tensor([0, 1, 1])
    m = angle_metrics(test, y, centers=centers)
    assert m["intra_angle"] == pytest.approx((30 + 10 + 10) / 3, abs=1e-9)
    assert m["inter_angle"] == pytest.approx(90.0, abs=1e-9)  # 90, 90, 90 from the centers
    own = angle_metrics(test, y)
    assert own["intra_angle"] != pytest.approx(m["intra_angle"], abs=1.0)


@pytest.mark.parametrize("magnitude", [1e-170, 1e-300, 1e300])
def test_given_centers_of_any_scale_keep_their_direction(magnitude) -> None:
    """A given center's scale does not matter (eqs. 2-3 use its direction): a center of
    norm 1e-170 in float64 (square 0) still counts in the inter-angle."""
    centers = at_angles([0.0, 90.0, 225.0])
    test = at_angles([30.0, 80.0])
    y = torch.tensor([0, 1])
    want = angle_metrics(test, y, centers=centers)
    assert want["inter_angle"] == pytest.approx(105.0, abs=1e-9)  # 90, 90, 135
    scaled = centers.clone()
    scaled[2] *= magnitude
    assert angle_metrics(test, y, centers=scaled) == pytest.approx(want, rel=1e-12)


def test_train_test_metrics_follow_section_4_1() -> None:
    train = at_angles(KNOWN_DEGREES, KNOWN_NORMS)
    # Test samples at 5, 95 and 200 + 40 degrees: 5, 5 and 40 from the training centers;
    # their own centers would be far apart in other ways, which must not matter.
    test = at_angles([5.0, 95.0, 240.0], [1.0, 2.0, 3.0])
    test_labels = torch.tensor([0, 1, 2])
    m = train_test_metrics(train, KNOWN_LABELS, test, test_labels, num_classes=3)
    intra_test = (5 + 5 + 40) / 3
    assert m["intra_train"] == pytest.approx(KNOWN_INTRA, abs=1e-9)
    assert m["intra_test"] == pytest.approx(intra_test, abs=1e-9)
    assert m["inter"] == pytest.approx(KNOWN_INTER, abs=1e-9)
    assert m["iir_train"] == pytest.approx(KNOWN_INTRA / KNOWN_INTER, abs=1e-12)
    assert m["iir_test"] == pytest.approx(intra_test / KNOWN_INTER, abs=1e-12)
    assert set(m) == {"intra_train", "intra_test", "inter", "iir_train", "iir_test"}


def naive_metrics(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[float, float]:
    """Eqs. (1)-(3) written out with Python loops over classes, in float64."""
    x = x.double()
    u = x / x.norm(dim=1, keepdim=True)
    centers = torch.stack([u[y == k].mean(0) for k in range(num_classes)])
    unit = centers / centers.norm(dim=1, keepdim=True)
    intra = torch.rad2deg(torch.acos((u * unit[y]).sum(1).clamp(-1, 1))).mean()
    between = torch.rad2deg(torch.acos((unit @ unit.T).clamp(-1, 1)))
    between.fill_diagonal_(math.inf)
    return float(intra), float(between.min(1).values.mean())


@pytest.mark.parametrize("num_classes", [3, 12])
def test_matches_a_naive_implementation(num_classes: int) -> None:
    g = torch.Generator().manual_seed(num_classes)
    x = torch.randn(600, 16, generator=g, dtype=torch.float64) + 0.5
    y = torch.arange(600) % num_classes
    m = angle_metrics(x, y)
    intra, inter = naive_metrics(x, y, num_classes)
    assert m["intra_angle"] == pytest.approx(intra, abs=1e-9)
    assert m["inter_angle"] == pytest.approx(inter, abs=1e-9)


def test_chunked_and_gathered_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 8, generator=g, dtype=torch.float64).relu()
    y = torch.randint(0, 5, (500,), generator=g)
    whole = angle_metrics(x, y)
    monkeypatch.setattr(_core, "CENTER_CHUNK_ELEMENTS", 8 * 37)  # 37-row chunks
    monkeypatch.setattr(_core, "ANGLE_CHUNK_ELEMENTS", 8 * 23)  # 23-row chunks
    monkeypatch.setattr(_core, "PARTIAL_SUM_ROWS", 100)  # float64 totals every 3 chunks
    monkeypatch.setattr(_core, "MATMUL_MAX_CLASSES", 0)  # gather each sample's center
    assert angle_metrics(x, y) == pytest.approx(whole, abs=1e-10)


def test_float32_center_sums_stay_within_their_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-class sums run in float32 over at most PARTIAL_SUM_ROWS samples, whatever the
    feature width (a chunk of narrow features holds far more rows than that): identical
    float32 vectors keep an intra-angle of 0 and their inter-angle to float32 precision,
    not the rounding of one float32 sum over a whole class."""
    monkeypatch.setattr(_core, "PARTIAL_SUM_ROWS", 256)
    g = torch.Generator().manual_seed(0)
    base = torch.rand(2, 8, generator=g) + 0.1
    x, y = base.repeat(1 << 14, 1), torch.arange(2).repeat(1 << 14)
    m = angle_metrics(x, y)
    assert m["intra_angle"] < 5e-4
    assert m["inter_angle"] == pytest.approx(angle_metrics(x.double(), y)["inter_angle"], abs=5e-4)


def test_tiny_angles_are_accurate() -> None:
    # arccos cannot resolve 1e-6 degrees in float64; the chord form must.
    x = at_angles([1e-6, -1e-6, 90.0])
    m = angle_metrics(x, torch.tensor([0, 0, 1]))
    assert m["intra_angle"] == pytest.approx(2e-6 / 3, rel=1e-6)


def test_half_precision_features_are_accepted() -> None:
    x = at_angles(KNOWN_DEGREES, KNOWN_NORMS).half()
    m = angle_metrics(x, KNOWN_LABELS)
    assert m["intra_angle"] == pytest.approx(KNOWN_INTRA, abs=0.1)


def test_zero_vectors_are_left_out() -> None:
    x = at_angles(KNOWN_DEGREES, KNOWN_NORMS)
    zeros = torch.zeros(3, 2, dtype=torch.float64)
    # Zero rows in class 0 and in class 3, which has no other sample.
    x_with = torch.cat([x, zeros])
    y_with = torch.cat([KNOWN_LABELS, torch.tensor([0, 3, 3])])
    assert angle_metrics(x_with, y_with) == pytest.approx(angle_metrics(x, KNOWN_LABELS))
    centers = class_centers(x_with, y_with, 4)
    torch.testing.assert_close(centers[:3], class_centers(x, KNOWN_LABELS, 3))
    assert torch.isnan(centers[3]).all()


def test_all_zero_features_are_an_error() -> None:
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="at least two classes"):
        angle_metrics(x, torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="no non-zero feature"):
        angle_metrics(x, torch.tensor([0, 1, 0, 1]), centers=torch.eye(2, 3))


@pytest.mark.parametrize(
    ("features", "labels", "kwargs", "error", "match"),
    [
        (torch.ones(4), torch.zeros(4, dtype=torch.long), {}, ValueError, "2-D"),
        (torch.ones(4, 2, 2), torch.zeros(4, dtype=torch.long), {}, ValueError, "2-D"),
        (torch.ones(4, 2), torch.tensor([0, 1, 0]), {}, ValueError, "3 labels for 4"),
        (torch.ones(2, 2), torch.tensor([0, 2]), {"num_classes": 2}, ValueError, "label 2"),
        (torch.ones(2, 2), torch.tensor([0, -1]), {"num_classes": 2}, ValueError, "label -1"),
        (torch.eye(2), torch.tensor([1, 1]), {"num_classes": 3}, ValueError, "two classes"),
        (torch.ones(2, 2, dtype=torch.long), torch.tensor([0, 1]), {}, TypeError, "floating"),
        (torch.eye(2), torch.tensor([0.0, 1.0]), {}, TypeError, "integers"),
        (torch.tensor([[1.0, math.nan], [0.0, 1.0]]), torch.tensor([0, 1]), {}, ValueError, "NaN"),
        (torch.eye(2), torch.tensor([0, 1]), {"centers": torch.eye(2, 3)}, ValueError, "3 feat"),
        (
            torch.eye(2),
            torch.tensor([0, 1]),
            {"centers": torch.eye(3, 2), "num_classes": 2},
            ValueError,
            "centers has 3 rows",
        ),
        (
            torch.eye(2),
            torch.tensor([0, 1]),
            {"centers": torch.tensor([[1.0, 0.0], [math.nan, math.nan], [0.0, 1.0]])},
            ValueError,
            r"classes \[1\] have no class center",
        ),
    ],
)
def test_bad_input_has_clear_errors(features, labels, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        angle_metrics(features, labels, **kwargs)


def test_bad_labels_for_class_centers() -> None:
    with pytest.raises(ValueError, match="outside"):
        class_centers(torch.eye(3), torch.tensor([0, 1, 5]), num_classes=3)


def test_identical_centers_give_infinite_iir() -> None:
    x = at_angles([0.0, 10.0, 0.0, 10.0])
    m = angle_metrics(x, torch.tensor([0, 0, 1, 1]))
    assert m["inter_angle"] == pytest.approx(0.0, abs=1e-12)
    assert m["iir"] == math.inf


@pytest.mark.parametrize("magnitude", [1e20, 1e35])
def test_huge_finite_float32_features_give_the_float64_angles(magnitude) -> None:
    """Angles are scale-invariant: finite float32 features whose norm overflows float32
    give the metrics of the same features in float64 (and at scale 1); NaN and inf at
    that scale are still refused."""
    torch.manual_seed(0)
    x = torch.randn(40, 16) + 2 * torch.randn(4, 16).repeat(10, 1)
    y = torch.arange(4).repeat(10)
    big = x * magnitude
    assert torch.isfinite(big).all()
    want = angle_metrics(big.double(), y)
    got = angle_metrics(big, y)
    for key, value in want.items():
        assert math.isclose(got[key], value, rel_tol=1e-5), (key, got[key], value)
    for bad in (math.nan, math.inf):
        broken = big.clone()
        broken[3, 2] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            angle_metrics(broken, y)


@pytest.mark.parametrize(
    ("dtype", "magnitude"),
    [
        (torch.float32, 1e-20),
        (torch.float32, 1e-24),
        (torch.float32, 1e-40),
        (torch.bfloat16, 1e-30),
        (torch.float64, 1e-170),
    ],
)
def test_tiny_nonzero_features_keep_their_angles(dtype, magnitude) -> None:
    """Angles are scale-invariant: rows whose squared norm underflows (values ~1e-24 in
    float32) still have a direction; they are neither zero vectors nor distorted."""
    torch.manual_seed(0)
    x = torch.randn(40, 16, dtype=torch.float64) + 2 * torch.randn(4, 16).double().repeat(10, 1)
    y = torch.arange(4).repeat(10)
    x[::3] *= magnitude  # some rows tiny, the others at scale 1
    small = x.to(dtype)
    assert bool((small[::3] != 0).any(dim=1).all())
    exact = small.double()
    rescaled = exact / exact.abs().amax(dim=1, keepdim=True)  # same directions, no underflow
    want = angle_metrics(rescaled, y)
    got = angle_metrics(small, y)
    for key, value in want.items():
        assert math.isclose(got[key], value, rel_tol=1e-5), (key, got[key], value)
    torch.testing.assert_close(class_centers(small, y, 4), class_centers(rescaled, y, 4))


def test_features_without_columns_have_no_direction() -> None:
    with pytest.raises(ValueError, match="at least two classes"):
        angle_metrics(torch.zeros(4, 0), torch.tensor([0, 1, 0, 1]))


def test_collapsed_features_raise_undefined_angle_error():
    """All-zero (finite) features give no class center: a ValueError of its own kind, so
    that training can record the angles as undefined and go on."""
    from l2bn.analysis import UndefinedAngleError

    x, y = torch.zeros(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(UndefinedAngleError, match="at least two classes"):
        train_test_metrics(x, y, x, y, 3)
    with pytest.raises(ValueError, match="NaN or inf"):  # not finite: a plain ValueError
        train_test_metrics(x.fill_(math.nan), y, x, y, 3)
