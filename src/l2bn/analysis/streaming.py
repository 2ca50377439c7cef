"""Streaming intra-angle, inter-angle and IIR for data that does not fit in memory.

Two passes over the data, as eqs. (1)-(2) of the supplement need the class centers
before any angle::

    acc = AngleAccumulator(num_classes)
    for x, y in batches():            # pass 1: class centers (eq. 1)
        acc.update_centers(x, y)
    for x, y in batches():            # pass 2: angles to the centers (eq. 2)
        acc.update_angles(x, y)
    train = acc.compute()             # intra_angle, inter_angle, iir

    test_acc = AngleAccumulator(num_classes, centers=acc.centers)   # section 4.1
    for x, y in test_batches():
        test_acc.update_angles(x, y)
    test = test_acc.compute()

The results equal :func:`l2bn.analysis.angle_metrics` on the concatenated batches (same
conventions for zero vectors and classes without samples).
"""

from __future__ import annotations

import torch
from torch import Tensor

from l2bn.analysis import _core
from l2bn.analysis._validate import check_features, check_labels


class AngleAccumulator:
    """Accumulates class centers (pass 1), then angles to them (pass 2).

    Args:
        num_classes: number of classes; labels must lie in ``[0, num_classes)``.
        centers: optional ``(num_classes, d)`` fixed centers (e.g. the training centers);
            pass 1 is then skipped.
    """

    def __init__(self, num_classes: int, centers: Tensor | None = None) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"l2bn.analysis: num_classes must be a positive int, got {num_classes}"
            )
        self.num_classes = num_classes
        self._sums: Tensor | None = None
        self._counts: Tensor | None = None
        self._centers: Tensor | None = None
        self._directions: tuple[Tensor, Tensor] | None = None
        self._angle_sum: Tensor | None = None
        self._angle_count = 0
        self.num_zero_in_centers = 0
        """Zero feature vectors seen in pass 1 (left out of the centers)."""
        self.num_zero_in_angles = 0
        """Zero feature vectors seen in pass 2 (left out of the intra-angle)."""
        if centers is not None:
            check_features(centers, name="centers")
            if centers.shape[0] != num_classes:
                raise ValueError(
                    f"l2bn.analysis: centers has {centers.shape[0]} rows, "
                    f"num_classes is {num_classes}"
                )
            self._centers = centers.detach().to(_core.ACCUMULATION_DTYPE).clone()

    @property
    def num_samples(self) -> int:
        """Non-zero samples whose angle has been accumulated (pass 2)."""
        return self._angle_count

    @torch.no_grad()
    def update_centers(self, features: Tensor, labels: Tensor) -> None:
        """Pass 1: add a batch ``(N, d)`` / ``(N,)`` to the class-center sums (eq. 1)."""
        if self._centers is not None:
            raise RuntimeError(
                "l2bn.analysis: the centers are fixed (given, or pass 2 has started); "
                "use a new AngleAccumulator for new centers"
            )
        features, labels = self._checked(features, labels)
        sums, counts, zeros = _core.center_sums(features, labels, self.num_classes)
        if self._sums is None:
            self._sums, self._counts = sums, counts
        else:
            self._sums += sums.to(self._sums.device)
            self._counts += counts.to(self._counts.device)
        self.num_zero_in_centers += int(zeros)

    @property
    def centers(self) -> Tensor:
        """The class centers (float64, NaN rows for classes without samples); ends pass 1."""
        if self._centers is None:
            if self._sums is None:
                raise RuntimeError(
                    "l2bn.analysis: no centers yet: call update_centers on the data first"
                )
            self._centers = _core.unit_centers(self._sums, self._counts)
        return self._centers

    @torch.no_grad()
    def update_angles(self, features: Tensor, labels: Tensor) -> None:
        """Pass 2: add the angles of a batch to its class centers (eq. 2)."""
        features, labels = self._checked(features, labels)
        unit, valid = self._center_directions()
        if features.shape[1] != unit.shape[1]:
            raise ValueError(
                f"l2bn.analysis: features have {features.shape[1]} features, "
                f"the centers {unit.shape[1]}"
            )
        total, count, zeros = _core.intra_angle_sum(features, labels, unit, valid)
        if self._angle_sum is None:
            self._angle_sum = total
        else:
            self._angle_sum += total.to(self._angle_sum.device)
        self._angle_count += int(count)
        self.num_zero_in_angles += int(zeros)

    def compute(self) -> dict[str, float]:
        """``{"intra_angle", "inter_angle", "iir"}`` (degrees, degrees, ratio; eqs. 2-4)."""
        unit, valid = self._center_directions()
        inter = _core.inter_angle(unit, valid)
        if self._angle_count == 0:
            raise _core.UndefinedAngleError(
                "l2bn.analysis: no non-zero sample in pass 2 (update_angles), "
                "the intra-angle is undefined"
            )
        intra = float(torch.rad2deg(self._angle_sum / self._angle_count))
        return {"intra_angle": intra, "inter_angle": inter, "iir": _core.ratio(intra, inter)}

    def _center_directions(self) -> tuple[Tensor, Tensor]:
        if self._directions is None:
            self._directions = _core.center_directions(self.centers)
        return self._directions

    def _checked(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        check_features(features)
        features = features.detach()
        if self._sums is not None and features.shape[1] != self._sums.shape[1]:
            raise ValueError(
                f"l2bn.analysis: this batch has {features.shape[1]} features, "
                f"earlier ones {self._sums.shape[1]}"
            )
        labels = check_labels(labels, features.shape[0], self.num_classes, features.device)
        return features, labels
