"""The batch-independent norms of Table 5: LN, IN and GN (Wu & He 2018 definitions).

On a (N, C, H, W) map: LN normalizes each sample over (C, H, W), IN each (sample,
channel) over (H, W), GN each sample over groups of channels; all three with a
per-channel affine, as in the Group Normalization paper (LN = GN with one group,
IN = GN with C groups).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from l2bn.norms.groups import groups_for_channels_per_group, nearest_divisor

GN_PAPER_GROUPS = 32
"""Wu & He's default group count, used when neither groups nor channels per group is given."""


def layer_norm_2d(
    num_features: int, eps: float = 1e-5, affine: bool = True, **factory: Any
) -> nn.GroupNorm:
    """LN over each sample's whole (C, H, W) map with a per-channel affine."""
    return nn.GroupNorm(1, num_features, eps=eps, affine=affine, **factory)


def instance_norm_2d(
    num_features: int, eps: float = 1e-5, affine: bool = True, **factory: Any
) -> nn.GroupNorm:
    """IN per (sample, channel) over (H, W) with a per-channel affine."""
    return nn.GroupNorm(num_features, num_features, eps=eps, affine=affine, **factory)


def group_norm_2d(
    num_features: int,
    channels_per_group: int | None = None,
    num_groups: int | None = None,
    eps: float = 1e-5,
    affine: bool = True,
    **factory: Any,
) -> nn.GroupNorm:
    """GN with ``channels_per_group`` channels per group (paper Table 5 uses 4 and 8).

    Give ``channels_per_group`` or ``num_groups`` (not both); with neither, GN's
    default of 32 groups. When ``channels_per_group`` does not divide ``num_features``,
    the group size nearest to it by ratio is used
    (:func:`l2bn.norms.groups.groups_for_channels_per_group`); when a group count does
    not, the nearest divisor (:func:`l2bn.norms.groups.nearest_divisor`).
    ``factory``: ``device`` and ``dtype``, as for torch layers.
    """
    if channels_per_group is not None and num_groups is not None:
        raise ValueError("gn: give channels_per_group or num_groups, not both")
    if channels_per_group is not None:
        if channels_per_group < 1:
            raise ValueError(f"gn: channels_per_group must be >= 1, got {channels_per_group}")
        groups = groups_for_channels_per_group(num_features, channels_per_group)
        return nn.GroupNorm(groups, num_features, eps=eps, affine=affine, **factory)
    if num_groups is not None:
        if num_groups < 1:
            raise ValueError(f"gn: num_groups must be >= 1, got {num_groups}")
        target = num_groups
    else:
        target = GN_PAPER_GROUPS
    groups = nearest_divisor(num_features, target)
    return nn.GroupNorm(groups, num_features, eps=eps, affine=affine, **factory)
