"""Group-count rules for the group-based norms (GN, BCN)."""

from __future__ import annotations


def _divisors(num_channels: int) -> list[int]:
    if num_channels < 1:
        raise ValueError(f"num_channels must be positive, got {num_channels}")
    return [g for g in range(1, num_channels + 1) if num_channels % g == 0]


def nearest_divisor(num_channels: int, target_groups: float) -> int:
    """The divisor of ``num_channels`` closest to ``target_groups`` (ties: more groups).

    GroupNorm needs a group count that divides the channel count; with the paper's
    rule for BCN (``min(32, C / 4)`` groups) this is exact for every ResNet-56 layer, and
    this fallback only matters for channel counts such as DenseNet's (e.g. 28 or 150
    channels). GN with a channels-per-group count uses
    :func:`groups_for_channels_per_group` instead.
    """
    divisors = _divisors(num_channels)
    return min(divisors, key=lambda g: (abs(g - target_groups), -g))


def groups_for_channels_per_group(num_channels: int, channels_per_group: float) -> int:
    """The group count whose group size (a divisor of ``num_channels``) is nearest to
    ``channels_per_group`` by ratio (``max(size / cpg, cpg / size)``; ties: more groups).

    ``C / cpg`` when that divides; otherwise the ratio keeps the group size near the one
    asked for: 124 channels with 8 per group give 31 groups of 4 (2x), not the 4 groups of
    31 (3.9x) that the group count nearest to 15.5 would give.
    """
    sizes = _divisors(num_channels)
    best = min(sizes, key=lambda s: (max(s / channels_per_group, channels_per_group / s), s))
    return num_channels // best
