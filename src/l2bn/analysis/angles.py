"""Intra-angle, inter-angle and IIR of in-memory features (supplement eqs. 1-3, paper eq. 4).

The measures of section 4.1, after ArcFace: with ``c_i`` the mean of the unit feature
vectors of class ``i`` (eq. 1), the intra-angle is the mean angle between each sample and
its class center (eq. 2), the inter-angle the mean over classes of the smallest angle to
another class center (eq. 3), and IIR = intra-angle / inter-angle (eq. 4). Angles are in
degrees.

Conventions:

* A feature vector of norm exactly 0 has no direction: it is left out of the centers and
  of the intra-angle (as if absent). Typical in ReLU networks for dead samples only.
* A class without samples (or whose unit vectors cancel exactly) has no center
  direction: :func:`class_centers` gives it a NaN row, the inter-angle is averaged over
  the classes that have one, and at least two such classes are required.
* Samples are processed in chunks; per-sample products run in the features' precision
  (float32 at least), sums over samples are accumulated in float64 (blockwise for the
  centers, see ``l2bn.analysis._core``). Small angles are computed from the chord between
  unit vectors, so they stay accurate near 0 degrees.
"""

from __future__ import annotations

import torch
from torch import Tensor

from l2bn.analysis import _core
from l2bn.analysis._validate import (
    check_centers,
    check_features,
    check_labels,
    resolve_num_classes,
)


@torch.no_grad()
def class_centers(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Class feature centers, supplement eq. (1): the mean of each class's unit vectors.

    ``features`` is ``(N, d)``, ``labels`` ``(N,)`` integers in ``[0, num_classes)``.
    Returns a float64 ``(num_classes, d)`` tensor; classes with no non-zero sample get a
    row of NaN. Zero feature vectors are ignored.
    """
    check_features(features)
    num_classes = resolve_num_classes(labels, num_classes, None)
    labels = check_labels(labels, features.shape[0], num_classes, features.device)
    sums, counts, _ = _core.center_sums(features, labels, num_classes)
    return _core.unit_centers(sums, counts)


@torch.no_grad()
def angle_metrics(
    features: Tensor,
    labels: Tensor,
    centers: Tensor | None = None,
    num_classes: int | None = None,
) -> dict[str, float]:
    """``{"intra_angle", "inter_angle", "iir"}`` of ``features`` (supplement eqs. 2-3, eq. 4).

    Without ``centers`` they are computed from ``features`` (eq. 1); ``num_classes``
    defaults to ``max(labels) + 1``. With ``centers`` (e.g. the training centers, for
    test data as in section 4.1) the intra-angle is measured against them and the
    inter-angle computed from them. Raises ValueError for features that are not 2-D,
    labels of another length or outside ``[0, num_classes)``, fewer than two classes
    with a center, no non-zero sample, or a sample whose class has no center. Zero
    feature vectors are ignored (see the module docstring).
    """
    check_features(features)
    num_classes = resolve_num_classes(labels, num_classes, centers)
    labels = check_labels(labels, features.shape[0], num_classes, features.device)
    if centers is None:
        sums, counts, _ = _core.center_sums(features, labels, num_classes)
        centers = _core.unit_centers(sums, counts)
    else:
        check_centers(centers, features.shape[1])
    unit, valid = _core.center_directions(centers)
    inter = _core.inter_angle(unit, valid)
    intra = _intra_angle(features, labels, unit, valid)
    return {"intra_angle": intra, "inter_angle": inter, "iir": _core.ratio(intra, inter)}


def train_test_metrics(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
) -> dict[str, float]:
    """The measures of Table 1 (section 4.1), all from the training-set class centers.

    Returns ``intra_train`` and ``intra_test`` (each set's angles to the training
    centers), ``inter`` (training centers only: the paper does not define a test
    inter-angle), ``iir_train = intra_train / inter`` and ``iir_test = intra_test / inter``.
    """
    centers = class_centers(train_features, train_labels, num_classes)
    train = angle_metrics(train_features, train_labels, centers=centers)
    test = angle_metrics(test_features, test_labels, centers=centers)
    return {
        "intra_train": train["intra_angle"],
        "intra_test": test["intra_angle"],
        "inter": train["inter_angle"],
        "iir_train": train["iir"],
        "iir_test": test["iir"],
    }


def _intra_angle(features: Tensor, labels: Tensor, unit: Tensor, valid: Tensor) -> float:
    total, count, _ = _core.intra_angle_sum(features, labels, unit, valid)
    if int(count) == 0:
        raise _core.UndefinedAngleError(
            "l2bn.analysis: no non-zero feature vector, the intra-angle is undefined"
        )
    return float(torch.rad2deg(total / count))
