"""CIFAR ResNeXt-29 (8x64d) (Xie et al. 2017, section 5.3).

A 3x3 convolution with 64 filters, then three stages of three bottleneck blocks
(depth 3 * 3 * 3 + 2 = 29) with output widths 256, 512 and 1024 on maps of 32, 16
and 8 pixels; each block is conv1x1-norm-ReLU, grouped conv3x3 (cardinality 8,
8 x 64 = 512 channels in stage 1, doubled at each stage)-norm-ReLU, conv1x1-norm,
plus a shortcut (identity, or conv1x1-norm projection when the shape changes), then
ReLU. Global average pooling and the classification layer follow. Published size:
34.4M parameters (CIFAR-10).
"""

from __future__ import annotations

from torch import nn

from l2bn.models._cifar_base import ThreeStageCifarNet
from l2bn.models._init import init_conv_linear_
from l2bn.models.bottleneck import GroupedBottleneck
from l2bn.models.registry import register_model
from l2bn.norms.registry import NormLayer


class CifarResNeXt(ThreeStageCifarNet):
    """ResNeXt-(9b + 2) with ``cardinality`` groups of ``base_width`` channels in stage 1."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        norm_layer: NormLayer,
        depth: int = 29,
        cardinality: int = 8,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        if (depth - 2) % 9 or depth < 11:
            raise ValueError(f"CIFAR ResNeXt depth must be 9b + 2 (b >= 1), got {depth}")
        blocks = (depth - 2) // 9
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.norm1 = norm_layer(64)
        width = 64
        for index in range(1, 4):
            out_width = 256 * 2 ** (index - 1)
            group_width = cardinality * base_width * 2 ** (index - 1)
            layers = []
            for b in range(blocks):
                stride = 2 if index > 1 and b == 0 else 1
                layers.append(
                    GroupedBottleneck(
                        width, group_width, out_width, cardinality, stride, norm_layer
                    )
                )
                width = out_width
            self.add_module(f"layer{index}", nn.Sequential(*layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)
        init_conv_linear_(self)


@register_model("resnext29_8x64d")
def resnext29_8x64d(num_classes: int, in_channels: int, norm_layer: NormLayer) -> CifarResNeXt:
    """ResNeXt-29 with cardinality 8 and bottleneck width 64d."""
    return CifarResNeXt(num_classes, in_channels, norm_layer, 29, 8, 64)
