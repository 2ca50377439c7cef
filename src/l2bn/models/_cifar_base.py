"""The forward shared by the three-stage CIFAR networks (ResNet, ResNeXt)."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


class ThreeStageCifarNet(nn.Module):
    """conv1-norm1-ReLU stem, ``layer1``-``layer3``, ``pool``, ``classifier``.

    Subclasses build those modules; ``forward_features`` is the classifier's input.
    """

    conv1: nn.Module
    norm1: nn.Module
    layer1: nn.Module
    layer2: nn.Module
    layer3: nn.Module
    pool: nn.Module
    classifier: nn.Module

    def forward_features(self, x: Tensor) -> Tensor:
        """The pooled feature fed to the classification layer."""
        x = F.relu(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.pool(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))
