"""Chunked kernels behind the angle measures (supplement eqs. 1-3).

Per-sample work (norms, dot products) runs in the features' precision (float32 at least,
float64 for float64 input). Sums over samples are accumulated in float64: the angle pass
adds each chunk's float64 angles, the center pass keeps per-class partial sums in the
compute dtype over blocks of at most ``PARTIAL_SUM_ROWS`` samples and adds the blocks in
float64. The features are read in chunks of a few million values, so the temporary memory
stays small whatever the number of samples.

A feature vector whose norm is exactly zero has no direction: it contributes to no class
center and to no intra-angle; it is only counted (``num_zero``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

ACCUMULATION_DTYPE = torch.float64
# Values per chunk. Large chunks mean few multi-threaded kernel launches, which matters
# most on a busy CPU; timed on 50,000 x 2,048 features on a 2-core CPU.
CENTER_CHUNK_ELEMENTS = 1 << 23
ANGLE_CHUNK_ELEMENTS = 1 << 23
# Per-class partial sums are kept in the compute dtype over at most this many samples,
# then added to the float64 totals.
PARTIAL_SUM_ROWS = 1 << 14
# With few classes one matmul against all centers gives each sample's dot product with
# its own center fastest; with many, gathering each sample's center is cheaper.
MATMUL_MAX_CLASSES = 256
# Above this cosine (angles below about 2.6 degrees) arccos loses precision; those
# angles are recomputed from the chord between the unit vectors, in float64.
_NEAR_ALIGNED_COS = 0.999


class UndefinedAngleError(ValueError):
    """The features give an angle no value: a class of the samples has no center (no
    training sample, or only zero vectors), no feature vector is non-zero, or fewer than
    two classes have a center (the inter-angle, supplement eq. 3). Raised for finite
    features that have collapsed, e.g. to zeros after a ReLU; NaN and inf raise a plain
    ValueError."""


def compute_dtype(features: Tensor) -> torch.dtype:
    """float64 for float64 features, float32 for every other floating dtype."""
    return torch.float64 if features.dtype == torch.float64 else torch.float32


def accumulation_device(device: torch.device) -> torch.device:
    """Where float64 sums can live: the features' device, except MPS (no float64)."""
    return torch.device("cpu") if device.type == "mps" else device


def chunk_rows(num_features: int, elements: int) -> int:
    return max(1, elements // max(1, num_features))


def finite_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(x', norms)``: the rows of ``x`` (``(m, d)``, float32 or float64) and their
    Euclidean norms, rows whose norm overflows (finite values of magnitude ~1e20 in
    float32) or underflows (non-zero values of magnitude ~1e-24 in float32, ~1e-170 in
    float64, whose squares are subnormal or 0) divided first by their largest absolute
    value. Angles and unit vectors are scale-invariant, so ``x'`` stands for ``x``; a row
    gets norm 0 only when all its values are 0.

    Raises:
        ValueError: a row holds NaN or inf.
    """
    norms = torch.linalg.vector_norm(x, dim=1)
    rescale = ~torch.isfinite(norms) | (norms < _min_exact_norm(x.dtype))
    if x.shape[1] == 0 or not bool(rescale.any()):
        return x, norms
    rows = torch.nonzero(rescale).flatten()
    peak = x[rows].abs().amax(dim=1)
    if not bool(torch.isfinite(peak).all()):
        bad = rows[~torch.isfinite(peak)][:5].tolist()
        raise ValueError(f"l2bn.analysis: features contain NaN or inf (e.g. rows {bad})")
    rows, peak = rows[peak > 0], peak[peak > 0]  # all-zero rows stay as they are
    if rows.numel() == 0:
        return x, norms
    scaled = x[rows] / peak.unsqueeze(1)
    x = x.index_copy(0, rows, scaled)
    return x, norms.index_copy(0, rows, torch.linalg.vector_norm(scaled, dim=1))


def _min_exact_norm(dtype: torch.dtype) -> float:
    """Smallest norm computed to full precision: from ``sqrt(tiny) / eps`` up, the squares
    that underflow (values below ``sqrt(tiny)``) add less than ``eps**2`` to the norm's
    square (9e-13 in float32, 7e-139 in float64)."""
    info = torch.finfo(dtype)
    return math.sqrt(info.tiny) / info.eps


def center_sums(
    features: Tensor, labels: Tensor, num_classes: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class sums of unit vectors (eq. 1 numerator), sample counts and zero count.

    Returns ``(sums (C, d) float64, counts (C,) int64, num_zero () int64)`` on the
    accumulation device. Zero rows are excluded from sums and counts.
    """
    n, d = features.shape
    dev = accumulation_device(features.device)
    sums = torch.zeros(num_classes, d, dtype=ACCUMULATION_DTYPE, device=dev)
    counts = torch.zeros(num_classes, dtype=torch.int64, device=dev)
    num_zero = torch.zeros((), dtype=torch.int64, device=dev)
    # No chunk, and no block of chunks summed in the compute dtype, exceeds
    # PARTIAL_SUM_ROWS rows (narrow features would otherwise give chunks of millions).
    step = min(chunk_rows(d, CENTER_CHUNK_ELEMENTS), PARTIAL_SUM_ROWS)
    partial, partial_rows = None, 0
    for start in range(0, n, step):
        x = features[start : start + step].to(compute_dtype(features))
        y = labels[start : start + step]
        x, norms = finite_rows(x)
        nonzero = norms > 0
        inv = torch.where(nonzero, 1.0 / norms.clamp_min(torch.finfo(x.dtype).tiny), 0.0)
        part = _weighted_class_sum(x, y, inv, num_classes)
        if partial is not None and partial_rows + x.shape[0] > PARTIAL_SUM_ROWS:
            sums += partial.to(dev, ACCUMULATION_DTYPE)
            partial, partial_rows = None, 0
        partial = part if partial is None else partial.add_(part)
        partial_rows += x.shape[0]
        counts += torch.bincount(y[nonzero], minlength=num_classes).to(dev)
        num_zero += (~nonzero).sum().to(dev)
    if partial is not None:
        sums += partial.to(dev, ACCUMULATION_DTYPE)
    return sums, counts, num_zero


def _weighted_class_sum(x: Tensor, y: Tensor, weights: Tensor, num_classes: int) -> Tensor:
    """``out[k] = sum_{j: y_j = k} weights_j * x_j`` reading ``x`` once (sparse matmul)."""
    m = x.shape[0]
    cols = torch.arange(m, device=x.device)
    if x.device.type in ("cpu", "cuda"):
        w = torch.sparse_coo_tensor(
            torch.stack([y, cols]),
            weights,
            (num_classes, m),
            is_coalesced=False,
            check_invariants=False,
        )
        return torch.sparse.mm(w, x)
    out = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device)
    return out.index_add_(0, y, x * weights.unsqueeze(1))


def unit_centers(sums: Tensor, counts: Tensor) -> Tensor:
    """Eq. (1): the mean of the unit vectors of each class; NaN rows for empty classes."""
    centers = sums / counts.unsqueeze(1).to(sums.dtype)
    return torch.where(counts.unsqueeze(1) > 0, centers, math.nan)


def center_directions(centers: Tensor) -> tuple[Tensor, Tensor]:
    """Unit centers in float64 and the mask of classes that have a direction.

    A class has a direction when its center is finite and not all zero, whatever its
    scale (norms that overflow or underflow float64 are rescaled, see
    :func:`finite_rows`); rows of classes without one are zero.
    """
    c = centers.to(accumulation_device(centers.device), ACCUMULATION_DTYPE)
    finite = torch.isfinite(c).all(dim=1)
    c, norms = finite_rows(torch.where(finite.unsqueeze(1), c, 0.0))
    valid = finite & (norms > 0)
    unit = c / torch.where(valid, norms, 1.0).unsqueeze(1)
    return unit, valid


def intra_angle_sum(
    features: Tensor, labels: Tensor, unit: Tensor, valid: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. (2) numerator: sum of the angles (radians) of samples to their class center.

    ``unit``/``valid`` come from :func:`center_directions`. Returns ``(angle_sum float64,
    count int64, num_zero int64)`` on the accumulation device; zero rows are skipped.
    Raises if a non-zero sample belongs to a class without a center direction.
    """
    n, d = features.shape
    dev = accumulation_device(features.device)
    dtype = compute_dtype(features)
    total = torch.zeros((), dtype=ACCUMULATION_DTYPE, device=dev)
    count = torch.zeros((), dtype=torch.int64, device=dev)
    num_zero = torch.zeros((), dtype=torch.int64, device=dev)
    unit_dev = unit.to(features.device, dtype)
    unit_acc = unit.to(dev)
    valid_dev = valid.to(features.device)
    step = chunk_rows(d, ANGLE_CHUNK_ELEMENTS)
    for start in range(0, n, step):
        x = features[start : start + step].to(dtype)
        y = labels[start : start + step]
        x, norms = finite_rows(x)
        zeros = int((norms == 0).sum())
        if zeros:
            num_zero += zeros
            keep = norms > 0
            x, y, norms = x[keep], y[keep], norms[keep]
        _check_centers_exist(y, valid_dev)
        if x.shape[0] == 0:
            continue
        dots = _dot_with_own_center(x, y, unit_dev)
        cos = (dots / norms).to(dev, ACCUMULATION_DTYPE).clamp_(-1.0, 1.0)
        angles = torch.acos(cos)
        near = cos > _NEAR_ALIGNED_COS
        if bool(near.any()):
            rows = near.to(x.device)
            angles[near] = _chord_angles(x[rows], norms[rows], unit_acc, y[rows])
        total += angles.sum()
        count += x.shape[0]
    return total, count, num_zero


def _check_centers_exist(y: Tensor, valid: Tensor) -> None:
    missing = ~valid[y]
    if bool(missing.any()):
        classes = sorted(set(y[missing].tolist()))
        raise UndefinedAngleError(
            "l2bn.analysis: samples of classes "
            f"{classes[:10]} have no class center (no training sample, or a zero center); "
            "their intra-angle is undefined"
        )


def _dot_with_own_center(x: Tensor, y: Tensor, unit: Tensor) -> Tensor:
    if unit.shape[0] <= MATMUL_MAX_CLASSES:
        return (x @ unit.T).gather(1, y.unsqueeze(1)).squeeze(1)
    return torch.linalg.vecdot(x, unit.index_select(0, y))


def _chord_angles(x: Tensor, norms: Tensor, unit: Tensor, y: Tensor) -> Tensor:
    """Angles (float64) between rows of ``x`` and their unit centers, on ``unit``'s device."""
    x = x.to(unit.device, ACCUMULATION_DTYPE)
    u = x / norms.to(unit.device, ACCUMULATION_DTYPE).unsqueeze(1)
    return unit_vector_angles(u, unit[y.to(unit.device)])


def unit_vector_angles(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise angles (radians) between unit vectors, accurate at every angle.

    ``2 atan2(|a - b|, |a + b|)`` avoids the loss of precision of arccos near 0 and 180.
    """
    minus = torch.linalg.vector_norm(a - b, dim=-1)
    plus = torch.linalg.vector_norm(a + b, dim=-1)
    return 2.0 * torch.atan2(minus, plus)


def inter_angle(unit: Tensor, valid: Tensor) -> float:
    """Eq. (3) over the classes with a center direction, in degrees.

    The mean over those classes of the smallest angle to any other of them. Raises when
    fewer than two classes have a direction.
    """
    present = unit[valid]
    if present.shape[0] < 2:
        raise UndefinedAngleError(
            "l2bn.analysis: the inter-angle needs at least two classes with samples "
            f"(classes with a center: {torch.nonzero(valid).flatten().tolist()})"
        )
    cos = (present @ present.T).clamp_(-1.0, 1.0)
    cos.fill_diagonal_(-math.inf)
    nearest = cos.max(dim=1)
    angles = unit_vector_angles(present, present[nearest.indices])
    return math.degrees(float(angles.mean()))


def ratio(intra: float, inter: float) -> float:
    """Eq. (4), IIR = intra / inter; inf (or NaN for 0/0) when the inter-angle is 0."""
    if inter == 0.0:
        return math.nan if intra == 0.0 else math.inf
    return intra / inter
