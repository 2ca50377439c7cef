"""CIFAR ResNet-20/32/44/56/110 (He et al. 2016, section 4.2).

A 3x3 convolution with 16 filters, then three residual stages (``layer1``-``layer3``)
of ``n`` basic blocks with 16, 32 and 64 filters on maps of 32, 16 and 8 pixels
(depth = 6n + 2), global average pooling and the classification layer. Shortcuts are
identities; where the map halves and the width doubles, option A: the shortcut
subsamples by 2 and pads the new channels with zeros (no parameters). Published
sizes: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M parameters.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from l2bn.models._cifar_base import ThreeStageCifarNet
from l2bn.models._init import init_conv_linear_
from l2bn.models.registry import register_model
from l2bn.norms.registry import NormLayer

STAGE_WIDTHS = (16, 32, 64)


class ZeroPadShortcut(nn.Module):
    """Option A shortcut: subsample by ``stride``, zero-pad up to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra = out_channels - in_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class BasicBlock(nn.Module):
    """conv3x3-norm-ReLU-conv3x3-norm, plus the shortcut, then ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm1 = norm_layer(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.norm2 = norm_layer(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ZeroPadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(ThreeStageCifarNet):
    """ResNet of depth ``6n + 2`` for 32x32 (or 28x28) images."""

    def __init__(
        self, depth: int, num_classes: int, in_channels: int, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (n >= 1), got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, 1, 1, bias=False)
        self.norm1 = norm_layer(STAGE_WIDTHS[0])
        width = STAGE_WIDTHS[0]
        for index, out_width in enumerate(STAGE_WIDTHS, start=1):
            stride = 1 if index == 1 else 2
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(width, out_width, stride if b == 0 else 1, norm_layer))
                width = out_width
            self.add_module(f"layer{index}", nn.Sequential(*layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)
        init_conv_linear_(self)


def _builder(depth: int):
    def build(
        num_classes: int, in_channels: int, norm_layer: NormLayer, **kwargs: Any
    ) -> CifarResNet:
        if kwargs:
            raise TypeError(f"resnet{depth}: unexpected arguments {sorted(kwargs)}")
        return CifarResNet(depth, num_classes, in_channels, norm_layer)

    build.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016), option A shortcuts."
    return build


for _depth in (20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}")(_builder(_depth))
