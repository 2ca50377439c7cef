"""Group-count rules for the group-based norms (GN, BCN)."""

from __future__ import annotations


def nearest_divisor(num_channels: int, target_groups: float) -> int:
    """The divisor of ``num_channels`` closest to ``target_groups`` (ties: more groups).

    GroupNorm needs a group count that divides the channel count; with the paper's
    rules (``C / cpg`` groups, ``min(32, C / 4)`` groups for BCN) this is exact for
    every ResNet-56 layer, and this fallback only matters for channel counts such as
    DenseNet's (e.g. 28 or 150 channels).
    """
    if num_channels < 1:
        raise ValueError(f"num_channels must be positive, got {num_channels}")
    divisors = [g for g in range(1, num_channels + 1) if num_channels % g == 0]
    return min(divisors, key=lambda g: (abs(g - target_groups), -g))
