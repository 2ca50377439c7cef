"""ResNet-17 of McDonnell & Gao (ICASSP 2020) for acoustic scenes (paper Table 6).

"Acoustic scene classification using deep residual networks with late fusion of separated
high and low frequency paths": the log-mel input ``(B, 3, 128, T)`` (channels: static,
delta, delta-delta) is split into its low (bins 0-63) and high (64-127) frequency halves,
each processed by its own residual path; the two are fused late, by concatenation along
frequency, two convolutions before the output. Structure (as in the authors' public Keras
code, reused by Hu et al. and the L2BN authors; 48 base filters as in Hu et al.'s
train_resnet.py, which the paper does not state; McDonnell & Gao's own code used 24):

* each path: norm (with learnable affine) -> conv 3x3 stride (1, 2) [17 convs per path:
  this one + 4 stages x 2 blocks x 2]; stages of 48, 96, 192, 384 filters; blocks are
  pre-activation (norm -> ReLU -> conv, twice) with norms *without* affine parameters;
  downsampling only along time (stride (1, 2)) in the first block of stages 2-4, where the
  shortcut is a 3x3 average pool with stride (1, 2) and zero channels appended (no
  projection). Frequency resolution is never reduced.
* fusion: concat along frequency (128 bins x 384 channels) -> norm -> ReLU -> conv 1x1 to
  ``2 * 768 = 1536`` channels -> norm -> conv 1x1 to ``num_classes`` (``model.classifier``)
  -> norm -> global average pooling -> logits (softmax is in the loss).

Assumptions and translation notes: Keras "same" padding is symmetric here (PyTorch), which
shifts the stride-2 sampling grid by one sample; Keras average pooling with "same" padding
ignores padded cells (``count_include_pad=False`` here); the BatchNorm hyper-parameters are
the norm factory's (Keras used momentum 0.99, epsilon 1e-3); kernels use Keras' truncated
``he_normal``. ``logit_norm="bn"`` keeps the last norm a plain BatchNorm as in the authors'
Keras code; the default ``"same"`` replaces every norm, as the paper states.

``model.classifier`` is the 1x1 convolution producing the class maps: its input, which the
analysis tools capture, is the ``(B, 1536, 128, T / 16)`` fused map after its norm (no
flat embedding exists in this fully convolutional net).

Parameters (48 filters, 10 classes, norms without affine inside the blocks): 12,966,444
(12,966,432 conv weights + 12 affine parameters of the two input norms). The source papers
do not state a count that we could find; tests check this figure against a layer-by-layer
count of the source architecture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2bn.models.asc_layers import (
    NormLayer,
    conv,
    init_keras_style,
    plain_norm,
    resolve_logit_norm,
)
from l2bn.models.registry import register_model

TIME_STRIDE = (1, 2)


class PreActConv(nn.Sequential):
    """norm -> (ReLU) -> conv: the ``resnet_layer`` unit of the source."""

    def __init__(
        self,
        norm: nn.Module,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int | tuple[int, int] = 1,
        relu: bool = True,
    ) -> None:
        layers: list[nn.Module] = [norm]
        if relu:
            layers.append(nn.ReLU())
        layers.append(conv(in_channels, out_channels, kernel_size, stride))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """Two pre-activation 3x3 convs; when downsampling, the shortcut is an average pool along
    time and zero-padded channels (McDonnell & Gao)."""

    def __init__(
        self, in_channels: int, out_channels: int, norm_layer: NormLayer, downsample: bool
    ) -> None:
        super().__init__()
        stride = TIME_STRIDE if downsample else 1
        self.conv1 = PreActConv(
            plain_norm(norm_layer, in_channels), in_channels, out_channels, 3, stride
        )
        self.conv2 = PreActConv(plain_norm(norm_layer, out_channels), out_channels, out_channels)
        self.pool = (
            nn.AvgPool2d(3, stride=TIME_STRIDE, padding=1, count_include_pad=False)
            if downsample
            else None
        )
        self.extra_channels = out_channels - in_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.conv1(x))
        shortcut = x if self.pool is None else self.pool(x)
        if self.extra_channels:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra_channels))
        return out + shortcut


class FrequencyPath(nn.Module):
    """One residual path over a frequency band: stem + 4 stages x 2 blocks."""

    def __init__(self, in_channels: int, base_filters: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.stem = PreActConv(
            norm_layer(in_channels), in_channels, base_filters, 3, TIME_STRIDE, relu=False
        )
        blocks: list[nn.Module] = []
        width = base_filters
        for stage in range(4):
            out = base_filters * 2**stage
            for block in range(2):
                blocks.append(ResidualBlock(width, out, norm_layer, stage > 0 and block == 0))
                width = out
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = width

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.stem(x))


class AscResNet17(nn.Module):
    """Two-path ResNet-17 with late fusion (see the module docstring)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        norm_layer: NormLayer = nn.BatchNorm2d,
        base_filters: int = 48,
        logit_norm: str = "same",
    ) -> None:
        super().__init__()
        if base_filters < 1:
            raise ValueError(f"base_filters must be >= 1, got {base_filters}")
        self.low = FrequencyPath(in_channels, base_filters, norm_layer)
        self.high = FrequencyPath(in_channels, base_filters, norm_layer)
        width = self.low.out_channels
        fused = 2 * (2 * width)  # the source doubles its filter count once more, then x2
        self.fusion = PreActConv(plain_norm(norm_layer, width), width, fused, kernel_size=1)
        self.classifier_norm = plain_norm(norm_layer, fused)
        self.classifier = conv(fused, num_classes, kernel_size=1)
        self.logit_norm = plain_norm(resolve_logit_norm(norm_layer, logit_norm), num_classes)
        init_keras_style(self)

    def forward(self, x: Tensor) -> Tensor:
        bands = x.shape[2]
        if bands < 2:
            raise ValueError(
                f"expected (B, C, bands, frames) with >= 2 bands, got {tuple(x.shape)}"
            )
        split = bands // 2
        fused = torch.cat((self.low(x[:, :, :split]), self.high(x[:, :, split:])), dim=2)
        maps = self.classifier(self.classifier_norm(self.fusion(fused)))
        return self.logit_norm(maps).mean(dim=(2, 3))


@register_model("asc_resnet17")
def asc_resnet17(
    num_classes: int, in_channels: int, norm_layer: NormLayer, **kwargs
) -> AscResNet17:
    """McDonnell & Gao's two-path ResNet-17 (48 base filters; ``base_filters=`` to change)."""
    return AscResNet17(num_classes, in_channels, norm_layer, **kwargs)
