"""AngleAccumulator: the two-pass streaming form equals the in-memory measures."""

from __future__ import annotations

import pytest
import torch

from l2bn.analysis import AngleAccumulator, angle_metrics, class_centers


def data(seed: int, n: int = 300, d: int = 12, classes: int = 6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64).relu()
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def batches(x: torch.Tensor, y: torch.Tensor, size: int = 64):
    for i in range(0, x.shape[0], size):
        yield x[i : i + size], y[i : i + size]


def test_two_passes_equal_angle_metrics() -> None:
    x, y = data(0)
    acc = AngleAccumulator(6)
    for xb, yb in batches(x, y):
        acc.update_centers(xb, yb)
    torch.testing.assert_close(acc.centers, class_centers(x, y, 6))
    for xb, yb in batches(x, y, 50):
        acc.update_angles(xb, yb)
    assert acc.compute() == pytest.approx(angle_metrics(x, y), abs=1e-10)
    assert acc.num_samples == int((x.norm(dim=1) > 0).sum())


def test_fixed_centers_measure_test_data_against_them() -> None:
    train_x, train_y = data(1)
    test_x, test_y = data(2, n=120)
    train = AngleAccumulator(6)
    for xb, yb in batches(train_x, train_y):
        train.update_centers(xb, yb)
    test = AngleAccumulator(6, centers=train.centers)
    for xb, yb in batches(test_x, test_y):
        test.update_angles(xb, yb)
    expected = angle_metrics(test_x, test_y, centers=class_centers(train_x, train_y, 6))
    assert test.compute() == pytest.approx(expected, abs=1e-10)
    assert test.compute() != pytest.approx(angle_metrics(test_x, test_y), abs=1e-3)


def test_zero_vectors_are_counted_and_left_out() -> None:
    x, y = data(3)
    x[:5] = 0.0
    acc = AngleAccumulator(6)
    for xb, yb in batches(x, y):
        acc.update_centers(xb, yb)
    for xb, yb in batches(x, y):
        acc.update_angles(xb, yb)
    nonzero = x.norm(dim=1) > 0
    zeros = int((~nonzero).sum())
    assert acc.num_zero_in_centers == zeros >= 5
    assert acc.num_zero_in_angles == zeros
    expected = angle_metrics(x[nonzero], y[nonzero])
    assert acc.compute() == pytest.approx(expected, abs=1e-10)


def test_misuse_is_reported() -> None:
    x, y = data(4)
    acc = AngleAccumulator(6)
    with pytest.raises(RuntimeError, match="update_centers"):
        acc.update_angles(x, y)
    acc.update_centers(x, y)
    with pytest.raises(ValueError, match="earlier ones 12"):
        acc.update_centers(x[:, :5], y)
    acc.update_angles(x, y)
    with pytest.raises(RuntimeError, match="fixed"):
        acc.update_centers(x, y)
    with pytest.raises(ValueError, match="outside"):
        acc.update_angles(x[:2], torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="no non-zero sample"):
        AngleAccumulator(6, centers=acc.centers).compute()
    with pytest.raises(ValueError, match="positive int"):
        AngleAccumulator(0)
    with pytest.raises(ValueError, match="rows"):
        AngleAccumulator(5, centers=acc.centers)


def test_collapsed_features_raise_undefined_angle_error() -> None:
    """All-zero (finite) features in pass 2 are UndefinedAngleError, as in angle_metrics,
    so that a caller that records undefined angles and goes on catches both."""
    from l2bn.analysis import UndefinedAngleError

    centers = torch.eye(3, 4, dtype=torch.float64)
    x, y = torch.zeros(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(UndefinedAngleError, match="no non-zero feature"):
        angle_metrics(x, y, centers=centers)
    acc = AngleAccumulator(3, centers=centers)
    acc.update_angles(x, y)
    with pytest.raises(UndefinedAngleError, match="no non-zero sample"):
        acc.compute()
