"""ImageNet ResNet-50/101 (He et al. 2016) and ResNeXt-50/101 32x4d (Xie et al. 2017).

Stem: conv7x7/2 (64)-norm-ReLU-maxpool3x3/2; four stages (``layer1``-``layer4``) of
bottleneck blocks ([3, 4, 6, 3] or [3, 4, 23, 3]) conv1x1-norm-ReLU,
conv3x3-norm-ReLU (grouped for ResNeXt: 32 groups of 4 channels in stage 1),
conv1x1 (4x expansion)-norm, plus an identity or conv1x1-norm projection shortcut;
global average pooling and the 1000-way classification layer. The stride of a stage
sits on the 3x3 convolution, as in the ResNeXt paper, fb.resnet.torch and torchvision
(parameter counts do not depend on it). Published sizes: 25.6M, 44.5M, 25.0M, 44.2M.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from l2bn.models._init import init_conv_linear_
from l2bn.models.bottleneck import GroupedBottleneck
from l2bn.models.registry import register_model
from l2bn.norms.registry import NormLayer

EXPANSION = 4


class Bottleneck(GroupedBottleneck):
    """ImageNet bottleneck: ``planes`` sets the width (scaled for ResNeXt) and 4x output."""

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int,
        groups: int,
        width_per_group: int,
        norm_layer: NormLayer,
    ) -> None:
        width = planes * width_per_group * groups // 64
        super().__init__(in_channels, width, planes * EXPANSION, groups, stride, norm_layer)


class ImageNetResNet(nn.Module):
    """Bottleneck ResNet / ResNeXt for 224x224 images (any size >= 32 works)."""

    def __init__(
        self,
        blocks: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int,
        norm_layer: NormLayer,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.norm1 = norm_layer(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        width = 64
        for index, count in enumerate(blocks, start=1):
            planes = 64 * 2 ** (index - 1)
            layers = []
            for b in range(count):
                stride = 2 if index > 1 and b == 0 else 1
                layers.append(
                    Bottleneck(width, planes, stride, groups, width_per_group, norm_layer)
                )
                width = planes * EXPANSION
            self.add_module(f"layer{index}", nn.Sequential(*layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)
        init_conv_linear_(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """The pooled feature fed to the classification layer."""
        x = self.maxpool(F.relu(self.norm1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.pool(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))


@register_model("resnet50")
def resnet50(num_classes: int, in_channels: int, norm_layer: NormLayer) -> ImageNetResNet:
    """ResNet-50: bottleneck blocks [3, 4, 6, 3]."""
    return ImageNetResNet((3, 4, 6, 3), num_classes, in_channels, norm_layer)


@register_model("resnet101")
def resnet101(num_classes: int, in_channels: int, norm_layer: NormLayer) -> ImageNetResNet:
    """ResNet-101: bottleneck blocks [3, 4, 23, 3]."""
    return ImageNetResNet((3, 4, 23, 3), num_classes, in_channels, norm_layer)


@register_model("resnext50_32x4d")
def resnext50_32x4d(num_classes: int, in_channels: int, norm_layer: NormLayer) -> ImageNetResNet:
    """ResNeXt-50 (32x4d): ResNet-50 layout with 32 groups of 4 channels."""
    return ImageNetResNet((3, 4, 6, 3), num_classes, in_channels, norm_layer, 32, 4)


@register_model("resnext101_32x4d")
def resnext101_32x4d(num_classes: int, in_channels: int, norm_layer: NormLayer) -> ImageNetResNet:
    """ResNeXt-101 (32x4d): ResNet-101 layout with 32 groups of 4 channels."""
    return ImageNetResNet((3, 4, 23, 3), num_classes, in_channels, norm_layer, 32, 4)
