"""VGG-16 and VGG-19 with batch normalization, CIFAR variant (Simonyan & Zisserman 2015,
configurations D and E; BN as in Ioffe & Szegedy 2015).

Every 3x3 convolution is followed by the norm layer and ReLU; five 2x2 max-pools take
a 32x32 image to 1x1x512, and the classification layer is a single
``Linear(512, num_classes)`` (the ImageNet model's three fully connected layers are
dropped, as in the usual CIFAR variant, e.g. Liu et al. 2017, "Network Slimming").
Pools use ``ceil_mode`` so that 28x28 images (Fashion-MNIST) also end at 1x1; on 32x32
images this changes nothing. The convolutions keep their biases, as in VGG and in the
common VGG-BN code (torchvision ``vgg16_bn``): BN cancels them, but L2BN does not (a
bias changes each sample's l2 norm), so the choice matters for the comparison.
"""

from __future__ import annotations

from torch import Tensor, nn

from l2bn.models._init import init_conv_linear_
from l2bn.models.registry import register_model
from l2bn.norms.registry import NormLayer

POOL = "M"
CONFIGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL,
              512, 512, 512, POOL, 512, 512, 512, POOL],
    "vgg19": [64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL,
              512, 512, 512, 512, POOL, 512, 512, 512, 512, POOL],
}  # fmt: skip


class CifarVGG(nn.Module):
    """VGG feature extractor (conv-norm-ReLU, max-pools) and one linear classifier."""

    def __init__(
        self, config: list[int | str], num_classes: int, in_channels: int, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for item in config:
            if item == POOL:
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                out = int(item)
                conv = nn.Conv2d(width, out, 3, 1, 1, bias=True)
                layers += [conv, norm_layer(out), nn.ReLU(inplace=True)]
                width = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)
        init_conv_linear_(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """The pooled feature fed to the classification layer."""
        return self.pool(self.features(x)).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))


@register_model("vgg16")
def vgg16(num_classes: int, in_channels: int, norm_layer: NormLayer) -> CifarVGG:
    """VGG-16 (configuration D) with a norm after every convolution, CIFAR variant."""
    return CifarVGG(CONFIGS["vgg16"], num_classes, in_channels, norm_layer)


@register_model("vgg19")
def vgg19(num_classes: int, in_channels: int, norm_layer: NormLayer) -> CifarVGG:
    """VGG-19 (configuration E) with a norm after every convolution, CIFAR variant."""
    return CifarVGG(CONFIGS["vgg19"], num_classes, in_channels, norm_layer)
