"""Batch-Channel Normalization (Qiao et al. 2019, "Micro-Batch Training with
Batch-Channel Normalization and Weight Standardization").

BCN is batch normalization (per-channel statistics over the batch, with its own
affine ``bn_weight``/``bn_bias`` and BatchNorm's running statistics) followed by a
channel-based normalization, Group Normalization, with its own per-channel affine
``weight``/``bias``. The L2BN paper (section 4.1) sets the group count to
``min(32, C / 4)``, as Qiao et al. do; when that does not divide C the nearest
divisor is used. This is the large-batch form of BCN: the micro-batch variant that
replaces batch statistics by estimated ones is not part of the paper's comparison.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.nn import functional as F

from l2bn.norms._batch_part import batch_normalize
from l2bn.norms._batch_stats_base import BatchStatsNorm2d
from l2bn.norms._running import check_4d
from l2bn.norms.groups import nearest_divisor

BCN_MAX_GROUPS = 32
BCN_CHANNELS_PER_GROUP = 4


def bcn_num_groups(num_channels: int) -> int:
    """``min(32, C / 4)`` groups (at least 1), rounded to the nearest divisor of C."""
    target = max(1.0, min(BCN_MAX_GROUPS, num_channels / BCN_CHANNELS_PER_GROUP))
    return nearest_divisor(num_channels, target)


class BatchChannelNorm2d(BatchStatsNorm2d):
    """BCN for (N, C, H, W) maps: BatchNorm (with affine) then GroupNorm (with affine)."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        num_groups: int | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        groups = bcn_num_groups(num_features) if num_groups is None else num_groups
        if num_features % groups:
            raise ValueError(
                f"bcn: num_groups={groups} does not divide num_features={num_features}"
            )
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.num_groups = groups
        self.register_affine("bn_weight", "bn_bias")  # the BatchNorm half's own affine

    def forward(self, x: Tensor) -> Tensor:
        check_4d(self, x, self.num_features)
        y = batch_normalize(self, x, self.bn_weight, self.bn_bias, self.eps, self.momentum)
        return F.group_norm(y, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_groups={self.num_groups}, eps={self.eps}, "
            f"momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )
