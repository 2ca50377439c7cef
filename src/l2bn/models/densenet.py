"""CIFAR DenseNet-40-12 and DenseNet-BC-100-12 (Huang et al. 2017, section 3).

A 3x3 convolution (16 filters, or 2k for DenseNet-BC), three dense blocks joined by
transition layers (norm-ReLU-conv1x1-avgpool2), then norm-ReLU, global average
pooling and the classification layer. Each dense layer is norm-ReLU-conv3x3 producing
k (growth rate) maps; DenseNet-BC puts a norm-ReLU-conv1x1 bottleneck with 4k maps
before it and halves the width at each transition (compression 0.5). Depth L has
(L - 4) / 3 layers per block, or (L - 4) / 6 bottleneck layers for BC. Published sizes:
1.0M (DenseNet-40-12) and 0.8M (DenseNet-BC-100-12) parameters. Dropout is off by
default (``drop_rate``), as in the paper's runs with data augmentation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from l2bn.models._init import init_conv_linear_
from l2bn.models.registry import register_model
from l2bn.norms.registry import NormLayer


class DenseLayer(nn.Module):
    """[norm-ReLU-conv1x1(4k)] - norm-ReLU-conv3x3(k); the output is concatenated."""

    def __init__(
        self,
        in_channels: int,
        growth_rate: int,
        bottleneck: bool,
        drop_rate: float,
        norm_layer: NormLayer,
    ) -> None:
        super().__init__()
        self.drop_rate = drop_rate
        width = in_channels
        if bottleneck:
            self.norm0 = norm_layer(in_channels)
            self.conv0 = nn.Conv2d(in_channels, 4 * growth_rate, 1, bias=False)
            width = 4 * growth_rate
        self.bottleneck = bottleneck
        self.norm1 = norm_layer(width)
        self.conv1 = nn.Conv2d(width, growth_rate, 3, 1, 1, bias=False)

    def _dropout(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.drop_rate, self.training) if self.drop_rate > 0 else x

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.bottleneck:
            out = self._dropout(self.conv0(F.relu(self.norm0(out))))
        out = self._dropout(self.conv1(F.relu(self.norm1(out))))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    """norm-ReLU-conv1x1-avgpool2 between dense blocks."""

    def __init__(
        self, in_channels: int, out_channels: int, drop_rate: float, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        self.drop_rate = drop_rate
        self.norm = norm_layer(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(F.relu(self.norm(x)))
        if self.drop_rate > 0:
            out = F.dropout(out, self.drop_rate, self.training)
        return F.avg_pool2d(out, 2)


class CifarDenseNet(nn.Module):
    """DenseNet with three dense blocks, for 32x32 (or 28x28) images."""

    def __init__(
        self,
        depth: int,
        growth_rate: int,
        bottleneck: bool,
        compression: float,
        num_classes: int,
        in_channels: int,
        norm_layer: NormLayer,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        per_block, remainder = divmod(depth - 4, 6 if bottleneck else 3)
        if remainder or per_block < 1:
            kind = "(depth - 4) / 6" if bottleneck else "(depth - 4) / 3"
            raise ValueError(f"DenseNet depth {depth}: {kind} must be a positive integer")
        width = 2 * growth_rate if bottleneck else 16
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        for block in range(1, 4):
            layers = []
            for _ in range(per_block):
                layers.append(DenseLayer(width, growth_rate, bottleneck, drop_rate, norm_layer))
                width += growth_rate
            self.add_module(f"block{block}", nn.Sequential(*layers))
            if block < 3:
                out_width = int(width * compression)
                self.add_module(
                    f"transition{block}", Transition(width, out_width, drop_rate, norm_layer)
                )
                width = out_width
        self.norm_final = norm_layer(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)
        init_conv_linear_(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """The pooled feature fed to the classification layer."""
        x = self.conv1(x)
        x = self.transition1(self.block1(x))
        x = self.transition2(self.block2(x))
        x = F.relu(self.norm_final(self.block3(x)))
        return self.pool(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))


@register_model("densenet40_12")
def densenet40_12(
    num_classes: int, in_channels: int, norm_layer: NormLayer, drop_rate: float = 0.0
) -> CifarDenseNet:
    """DenseNet (L=40, k=12): basic layers, no compression."""
    return CifarDenseNet(40, 12, False, 1.0, num_classes, in_channels, norm_layer, drop_rate)


@register_model("densenet_bc_100_12")
def densenet_bc_100_12(
    num_classes: int, in_channels: int, norm_layer: NormLayer, drop_rate: float = 0.0
) -> CifarDenseNet:
    """DenseNet-BC (L=100, k=12): bottleneck layers, compression 0.5."""
    return CifarDenseNet(100, 12, True, 0.5, num_classes, in_channels, norm_layer, drop_rate)
