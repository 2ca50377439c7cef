"""Pieces shared by the acoustic-scene models (paper section 4.2, Table 6).

The source recipes are Keras models (McDonnell & Gao 2020; Hu et al. 2020); these helpers
translate their conventions:

* :func:`plain_norm`: a norm layer without learnable scale and shift, Keras'
  ``BatchNormalization(center=False, scale=False)`` (torch: ``affine=False``), built from any
  ``norm_layer`` factory so that ``bn``, ``l2bn`` and every registry norm plug in.
* :func:`init_keras_style`: Keras' ``he_normal`` (a truncated normal whose samples have
  std ``sqrt(2 / fan_in)``) for conv and dense kernels, zero biases.
* :class:`ChannelAttention`: the channel attention of Hu et al. (CBAM's channel branch:
  a shared two-layer MLP on the average- and max-pooled maps, summed, sigmoid).

The acoustic models use out-of-place ReLUs, so any norm layer plugs in, including one
whose output is a view (autograd forbids in-place ops on those).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]

_AFFINE_FLAGS = ("affine", "elementwise_affine")
_TRUNCATED_STD = 0.87962566103423978
"""Standard deviation of a unit normal truncated to [-2, 2] (Keras' VarianceScaling)."""


def plain_norm(norm_layer: NormLayer, num_features: int) -> nn.Module:
    """``norm_layer(num_features)`` with its learnable per-channel scale and shift removed.

    In every submodule that declares ``affine`` / ``elementwise_affine`` (torch's norms and
    the registry's), ``weight`` and ``bias`` (and the further pairs a registry norm names
    in ``affine_parameters``, such as BCN's ``bn_weight`` / ``bn_bias``) become None and
    the flag False, exactly as if built with ``affine=False``. A norm without such a flag
    keeps them but frozen at their initial values (scale 1, shift 0), which computes the
    same function.
    """
    module = norm_layer(num_features)
    stripped = False
    for sub in module.modules():
        flag = next((f for f in _AFFINE_FLAGS if getattr(sub, f, False) is True), None)
        if flag is None:
            continue
        for name in getattr(sub, "affine_parameters", ("weight", "bias")):
            if isinstance(getattr(sub, name, None), nn.Parameter):
                sub.register_parameter(name, None)
        setattr(sub, flag, False)
        stripped = True
    if not stripped:
        for name in ("weight", "bias"):
            param = getattr(module, name, None)
            if isinstance(param, nn.Parameter):
                param.requires_grad_(False)
    return module


def init_keras_style(module: nn.Module) -> None:
    """Keras ``he_normal`` kernels, zero biases.

    Keras >= 2.2 (the recipes ran 2.2.4) draws ``he_normal`` as a normal of std
    ``sqrt(2 / fan_in) / 0.8796`` cut at two of its standard deviations, so that the kept
    samples have std ``sqrt(2 / fan_in)``.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            std = math.sqrt(2.0 / fan_in) / _TRUNCATED_STD
            nn.init.trunc_normal_(m.weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int | tuple[int, int] = 1,
    padding: int | None = None,
) -> nn.Conv2d:
    """A bias-free convolution; ``padding`` defaults to ``kernel_size // 2`` ("same")."""
    pad = kernel_size // 2 if padding is None else padding
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad, bias=False)


class ChannelAttention(nn.Module):
    """Hu et al.'s channel attention: ``x * sigmoid(mlp(avgpool(x)) + mlp(maxpool(x)))``.

    The MLP (``channels -> channels // ratio -> channels``, ReLU between, with biases) is
    shared by both pooled descriptors; the source uses ``ratio=2`` on the class maps.
    """

    def __init__(self, channels: int, ratio: int = 2) -> None:
        super().__init__()
        hidden = max(channels // ratio, 1)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        avg = self.mlp(x.mean(dim=(2, 3)))
        peak = self.mlp(x.amax(dim=(2, 3)))
        return x * torch.sigmoid(avg + peak)[:, :, None, None]


def resolve_logit_norm(norm_layer: NormLayer, logit_norm: str) -> NormLayer:
    """The norm of the final class maps: ``"same"`` (``norm_layer``: the paper's "replace
    each BN") or ``"bn"`` (plain BatchNorm2d, as the authors' Keras code kept it)."""
    if logit_norm == "same":
        return norm_layer
    if logit_norm == "bn":
        return nn.BatchNorm2d
    raise ValueError(f"logit_norm must be 'same' or 'bn', got {logit_norm!r}")
