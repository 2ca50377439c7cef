"""The state the mixed norms (SN, BCN, BIN) share with BatchNorm.

BatchNorm's hyper-parameters, a per-channel affine pair and the running buffers, kept in
the module itself (no child ``nn.BatchNorm2d``, so that :func:`l2bn.convert_bn_to_l2bn`
never converts half of a mixed norm).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from l2bn.norms._running import register_running_stats, reset_running_stats


class BatchStatsNorm2d(nn.Module):
    """Base of the mixed norms for (N, C, H, W) maps."""

    l2bn_batch_running_stats = True  # l2bn.update_bn recomputes its statistics (l2bn.swa)

    def __init__(
        self,
        num_features: int,
        eps: float,
        momentum: float | None,
        affine: bool,
        track_running_stats: bool,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self._factory = {"device": device, "dtype": dtype}
        # The names of every affine pair (BCN has two), for helpers that strip them.
        self.affine_parameters: tuple[str, ...] = ()
        self.register_affine("weight", "bias")
        register_running_stats(self, num_features, track_running_stats, device, dtype)

    def register_affine(self, weight_name: str, bias_name: str) -> None:
        """A per-channel scale (ones) and shift (zeros), or None when ``affine`` is off;
        the names are added to ``affine_parameters``."""
        self.affine_parameters += (weight_name, bias_name)
        if self.affine:
            ones = torch.ones(self.num_features, **self._factory)
            self.register_parameter(weight_name, nn.Parameter(ones))
            self.register_parameter(bias_name, nn.Parameter(torch.zeros_like(ones)))
        else:
            self.register_parameter(weight_name, None)
            self.register_parameter(bias_name, None)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1 and no batch counted, as BatchNorm's
        ``reset_running_stats``; nothing when the layer tracks no running statistics."""
        reset_running_stats(self)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )
