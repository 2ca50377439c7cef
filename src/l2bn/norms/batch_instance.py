"""Batch-Instance Normalization (Nam & Kim 2018, "Batch-Instance Normalization for
Adaptively Style-Invariant Neural Networks").

``y = gamma * (rho * x_bn + (1 - rho) * x_in) + beta`` where ``x_bn`` is ``x``
normalized with batch statistics (BatchNorm's running statistics at evaluation),
``x_in`` is ``x`` normalized per (sample, channel), and ``rho`` (``gate``, one per
channel, initialized to 1 so BIN starts as BN) lives in [0, 1]. The paper keeps
``rho`` in [0, 1] by clipping it after each parameter update: call
:func:`clip_gates_` after ``optimizer.step()``, or let
:func:`install_gate_clipping` do it from an optimizer hook. The forward pass uses
``gate.clamp(0, 1)``, so an unclipped gate can never produce a mix outside [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from l2bn.norms._batch_part import batch_normalize
from l2bn.norms._batch_stats_base import BatchStatsNorm2d
from l2bn.norms._running import check_4d


class BatchInstanceNorm2d(BatchStatsNorm2d):
    """BIN for (N, C, H, W) maps: a per-channel gate in [0, 1] mixes BN and IN, then affine."""

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
        self.gate = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))

    @torch.no_grad()
    def clip_gate_(self) -> None:
        """Project the gate back onto [0, 1] (the paper's update rule)."""
        self.gate.clamp_(0.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        check_4d(self, x, self.num_features)
        x_bn = batch_normalize(self, x, None, None, self.eps, self.momentum)
        x_in = F.instance_norm(x, eps=self.eps)
        rho = self.gate.clamp(0.0, 1.0).view(1, -1, 1, 1)
        y = x_in + rho * (x_bn - x_in)
        if self.weight is not None:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y


def clip_gates_(module: nn.Module) -> int:
    """Clip the gate of every BIN layer in ``module`` to [0, 1]; return how many layers."""
    layers = [m for m in module.modules() if isinstance(m, BatchInstanceNorm2d)]
    for layer in layers:
        layer.clip_gate_()
    return len(layers)


def install_gate_clipping(
    optimizer: torch.optim.Optimizer, module: nn.Module
) -> Callable[[], None]:
    """Clip ``module``'s BIN gates after every ``optimizer.step()``; returns a remover."""

    def hook(_optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        clip_gates_(module)

    handle = optimizer.register_step_post_hook(hook)
    return handle.remove
