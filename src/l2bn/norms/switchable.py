"""Switchable Normalization (Luo et al. 2018, "Differentiable Learning-to-Normalize").

The mean and the variance are each a softmax-weighted mix of the IN, LN and BN
statistics (paper eqs. 3-5):

* IN: per (n, c) over (H, W): ``mu_in``, ``var_in`` (biased);
* LN: per n, from the IN statistics: ``mu_ln = mean_c mu_in``,
  ``var_ln = mean_c (var_in + mu_in^2) - mu_ln^2``;
* BN: per c, from the IN statistics: ``mu_bn = mean_n mu_in``,
  ``var_bn = mean_n (var_in + mu_in^2) - mu_bn^2``;

The LN and BN variances are computed in the equal, centred form
``mean (var_in + (mu_in - mu)^2)`` (every (n, c) holds H * W values): the raw second
moment would cancel catastrophically in float32 once a channel's mean is large against its
spread (about 1e-3 output error at a mean of 100 standard deviations).

``y = gamma * (x - sum_k w_k mu_k) / sqrt(sum_k w'_k var_k + eps) + beta`` with
``w = softmax(mean_weight)``, ``w' = softmax(var_weight)`` (control parameters
initialized to 1, i.e. equal weights). At evaluation the BN statistics are the
running averages, kept exactly as BatchNorm keeps them (the paper's moving-average
option); IN and LN statistics are always those of the sample.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from l2bn.norms._batch_stats_base import BatchStatsNorm2d
from l2bn.norms._running import (
    check_4d,
    momentum_factor,
    update_running_stats,
)

SN_SOURCES = ("in", "ln", "bn")
"""Order of the importance weights in ``mean_weight`` / ``var_weight``."""


class SwitchableNorm2d(BatchStatsNorm2d):
    """Switchable Normalization for (N, C, H, W) maps, mixing IN, LN and BN."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        factory = {"device": device, "dtype": dtype}
        self.mean_weight = nn.Parameter(torch.ones(len(SN_SOURCES), **factory))
        self.var_weight = nn.Parameter(torch.ones(len(SN_SOURCES), **factory))

    def importance_weights(self) -> tuple[Tensor, Tensor]:
        """Softmax-normalized weights (IN, LN, BN) for the mean and for the variance."""
        return self.mean_weight.softmax(0), self.var_weight.softmax(0)

    def _batch_statistics(self, mu_in: Tensor, var_in: Tensor, count: int) -> tuple[Tensor, Tensor]:
        """BN's (1, C, 1, 1) mean and biased variance: the batch's, pooled from the IN
        statistics ``mu_in``, ``var_in`` (N, C, 1, 1) (and blended into the running
        buffers), or the running ones at evaluation."""
        use_batch = self.training or self.running_mean is None
        if not use_batch:
            shape = (1, self.num_features, 1, 1)
            return self.running_mean.view(shape), self.running_var.view(shape)
        mu_bn, var_bn = _pooled(mu_in, var_in, 0)
        if self.training and self.running_mean is not None:
            factor = momentum_factor(self, self.momentum)
            update_running_stats(self, mu_bn.flatten(), var_bn.flatten(), count, factor)
        return mu_bn, var_bn

    def forward(self, x: Tensor) -> Tensor:
        check_4d(self, x, self.num_features)
        count = x.shape[0] * x.shape[2] * x.shape[3]
        if self.training and count <= 1:
            raise ValueError(f"SwitchableNorm2d: need more than 1 value per channel, got {x.shape}")
        var_in, mu_in = torch.var_mean(x, dim=(2, 3), unbiased=False, keepdim=True)
        mu_ln, var_ln = _pooled(mu_in, var_in, 1)
        mu_bn, var_bn = self._batch_statistics(mu_in, var_in, count)
        w_mean, w_var = self.importance_weights()
        mean = w_mean[0] * mu_in + w_mean[1] * mu_ln + w_mean[2] * mu_bn
        var = w_var[0] * var_in + w_var[1] * var_ln + w_var[2] * var_bn
        y = (x - mean) * (var.clamp_min(0) + self.eps).rsqrt()
        if self.weight is not None:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y


def _pooled(mu: Tensor, var: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of the union of equally sized parts, from each part's mean
    ``mu`` and biased variance ``var`` (reduced over ``dim``, kept): ``mean(mu)`` and
    ``mean(var + (mu - mean(mu))^2)``, the centred form that keeps float32 accuracy."""
    mean = mu.mean(dim, keepdim=True)
    return mean, (var + (mu - mean).square()).mean(dim, keepdim=True)
