"""RegNetX and RegNetY (Radosavovic et al. 2020, "Designing Network Design Spaces").

Widths and depths come from the paper's quantized linear rule (section 3.3):
``u_j = w0 + wa * j`` for block j < d, ``s_j = round(log(u_j / w0) / log(wm))``,
``w_j = w0 * wm ** s_j`` rounded to a multiple of 8; equal consecutive widths form a
stage. Blocks are the X block (conv1x1-norm-ReLU, grouped conv3x3 with group width g
-norm-ReLU, conv1x1-norm, plus identity or conv1x1-norm projection, ReLU; bottleneck
ratio 1); RegNetY adds squeeze-and-excitation after the 3x3 convolution with
``round(0.25 * block input width)`` channels. Stem: conv3x3 (32)-norm-ReLU.

Configuration chosen (the L2BN paper gives none): the published RegNetX-200MF and
RegNetY-200MF (d=13, w0=24, wa=36.44, wm=2.49, g=8; stages of depths 1, 1, 4, 7 and
widths 24, 56, 152, 368), the smallest model of each family and the one with the
exact same widths in X and Y, so that the pair differs only by the SE blocks; the
400MF settings are available with ``config="400mf"``. For CIFAR images the stem and
the first two stages keep the resolution (strides 1; 1, 1, 2, 2), so a 32x32 image
ends on an 8x8 map as in the CIFAR ResNets, the usual adaptation of these models
to CIFAR. ``stem_stride=2, stage_strides=(2, 2, 2, 2)`` gives the ImageNet model
(published: 2.7M X-200MF, 3.2M Y-200MF, 5.2M X-400MF, 4.3M Y-400MF at 1000 classes).
Strides change the parameter count only where a block keeps its width: RegNetX-400MF's
first stage is as wide as the stem (32), so at stride 1 its first block has an identity
shortcut instead of the conv1x1-norm projection (5,156,424 parameters instead of
5,157,512); the other three configurations are the same at any strides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn import functional as F

from l2bn.models._init import init_conv_linear_
from l2bn.models.bottleneck import GroupedBottleneck
from l2bn.models.registry import register_model
from l2bn.norms.registry import NormLayer

STEM_WIDTH = 32
SE_RATIO = 0.25
WIDTH_QUANTUM = 8


@dataclass(frozen=True)
class RegNetConfig:
    """The design-space parameters of one RegNet (paper section 3.3, Table of models)."""

    depth: int
    w0: int
    wa: float
    wm: float
    group_width: int


CONFIGS_X = {
    "200mf": RegNetConfig(13, 24, 36.44, 2.49, 8),
    "400mf": RegNetConfig(22, 24, 24.48, 2.54, 16),
}
CONFIGS_Y = {
    "200mf": RegNetConfig(13, 24, 36.44, 2.49, 8),
    "400mf": RegNetConfig(16, 48, 27.89, 2.09, 8),
}


def stage_layout(cfg: RegNetConfig) -> list[tuple[int, int, int]]:
    """``(depth, width, group_width)`` per stage from the quantized linear rule."""
    widths = []
    for j in range(cfg.depth):
        u = cfg.w0 + cfg.wa * j
        s = round(math.log(u / cfg.w0) / math.log(cfg.wm))
        widths.append(int(round(cfg.w0 * cfg.wm**s / WIDTH_QUANTUM) * WIDTH_QUANTUM))
    stages: list[list[int]] = []
    for w in widths:
        if stages and stages[-1][1] == w:
            stages[-1][0] += 1
        else:
            stages.append([1, w])
    layout = []
    for depth, width in stages:
        g = min(cfg.group_width, width)
        layout.append((depth, int(round(width / g) * g), g))
    return layout


class SqueezeExcite(nn.Module):
    """Channel attention: global pool, conv1x1-ReLU, conv1x1-sigmoid, rescale."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1, bias=True)
        self.expand = nn.Conv2d(squeezed, channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.expand(F.relu(self.reduce(s))).sigmoid()


class RegNetBlock(GroupedBottleneck):
    """X block (bottleneck ratio 1, group convolution), with optional SE (Y block)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        group_width: int,
        se: bool,
        norm_layer: NormLayer,
    ) -> None:
        squeeze = SqueezeExcite(out_channels, round(in_channels * SE_RATIO)) if se else None
        groups = out_channels // group_width
        super().__init__(
            in_channels, out_channels, out_channels, groups, stride, norm_layer, squeeze
        )


class RegNet(nn.Module):
    """RegNet: stem, four stages (``layer1``-``layer4``) of X/Y blocks, pooling, classifier."""

    def __init__(
        self,
        cfg: RegNetConfig,
        se: bool,
        num_classes: int,
        in_channels: int,
        norm_layer: NormLayer,
        stem_stride: int = 1,
        stage_strides: tuple[int, ...] = (1, 1, 2, 2),
    ) -> None:
        super().__init__()
        layout = stage_layout(cfg)
        if len(stage_strides) != len(layout):
            raise ValueError(f"stage_strides needs {len(layout)} values, got {stage_strides}")
        self.conv1 = nn.Conv2d(in_channels, STEM_WIDTH, 3, stem_stride, 1, bias=False)
        self.norm1 = norm_layer(STEM_WIDTH)
        width = STEM_WIDTH
        for index, ((depth, out_width, g), stride) in enumerate(
            zip(layout, stage_strides, strict=True), start=1
        ):
            blocks = []
            for b in range(depth):
                blocks.append(
                    RegNetBlock(width, out_width, stride if b == 0 else 1, g, se, norm_layer)
                )
                width = out_width
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.num_stages = len(layout)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)
        init_conv_linear_(self)
        nn.init.normal_(self.classifier.weight, std=0.01)

    def forward_features(self, x: Tensor) -> Tensor:
        """The pooled feature fed to the classification layer."""
        x = F.relu(self.norm1(self.conv1(x)))
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.pool(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))


def _config(table: dict[str, RegNetConfig], config: str, family: str) -> RegNetConfig:
    key = config.lower()
    if key not in table:
        raise ValueError(f"{family}: unknown config {config!r}; valid: {', '.join(table)}")
    return table[key]


@register_model("regnetx")
def regnetx(
    num_classes: int,
    in_channels: int,
    norm_layer: NormLayer,
    config: str = "200mf",
    stem_stride: int = 1,
    stage_strides: tuple[int, ...] = (1, 1, 2, 2),
) -> RegNet:
    """RegNetX (default RegNetX-200MF, CIFAR strides; see the module docstring)."""
    cfg = _config(CONFIGS_X, config, "regnetx")
    return RegNet(cfg, False, num_classes, in_channels, norm_layer, stem_stride, stage_strides)


@register_model("regnety")
def regnety(
    num_classes: int,
    in_channels: int,
    norm_layer: NormLayer,
    config: str = "200mf",
    stem_stride: int = 1,
    stage_strides: tuple[int, ...] = (1, 1, 2, 2),
) -> RegNet:
    """RegNetY (default RegNetY-200MF, CIFAR strides; see the module docstring)."""
    cfg = _config(CONFIGS_Y, config, "regnety")
    return RegNet(cfg, True, num_classes, in_channels, norm_layer, stem_stride, stage_strides)
