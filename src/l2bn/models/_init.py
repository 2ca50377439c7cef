"""Weight initialization shared by the model families (as in their original papers)."""

from __future__ import annotations

from torch import nn


def init_conv_linear_(model: nn.Module) -> None:
    """He et al. (2015) normal init, fan-out mode, for every convolution (no bias);
    PyTorch's default init with zero bias for linear layers.

    This is the initialization of the reference Torch code of ResNet, DenseNet and
    ResNeXt (``std = sqrt(2 / (k * k * out_channels))``) and of RegNet. Norm layers keep
    their constructors' init: weight 1, bias 0.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
