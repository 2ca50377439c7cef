"""The (grouped) bottleneck residual block shared by ResNet and ResNeXt.

conv1x1-norm-ReLU, conv3x3 (``groups``, stride)-norm-ReLU, [squeeze-excitation],
conv1x1-norm, plus an identity or conv1x1-norm projection shortcut, then ReLU (He et al.
2016, Fig. 5; Xie et al. 2017, Fig. 3(c); RegNet's X/Y blocks, Radosavovic et al. 2020).
The stride sits on the 3x3 convolution.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from l2bn.norms.registry import NormLayer


class GroupedBottleneck(nn.Module):
    """Inner ``width`` split into ``groups``; maps ``in_channels`` to ``out_channels``."""

    def __init__(
        self,
        in_channels: int,
        width: int,
        out_channels: int,
        groups: int,
        stride: int,
        norm_layer: NormLayer,
        squeeze: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.norm1 = norm_layer(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.norm2 = norm_layer(width)
        self.se: nn.Module = nn.Identity() if squeeze is None else squeeze
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.norm3 = norm_layer(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                norm_layer(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.se(F.relu(self.norm2(self.conv2(out))))
        out = self.norm3(self.conv3(out))
        return F.relu(out + self.shortcut(x))
