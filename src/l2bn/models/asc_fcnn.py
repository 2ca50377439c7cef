"""FCNN and fsFCNN of Hu et al. (DCASE 2020 technical report) for acoustic scenes (Table 6).

"Device-robust acoustic scene classification based on two-stage categorization and data
augmentation" (Hu, Yang, Xia, et al., 2020): VGG-like fully convolutional networks with
channel attention on the class maps. The structures follow the authors' public Keras code
(``fcnn_att.py`` / ``fsfcnn_att.py``), which the L2BN authors reused for Table 6; input
``(B, 3, 128, T)`` (bands x frames), every conv bias-free and followed by norm + ReLU.

FCNN (widths 144, 288, 576: the recipe's 48, 96, 192 filters times its 3 input channels):

* input norm (affine); conv 5x5 stride 2 (pad 2); conv 3x3; max-pool 2x2
* conv 3x3; conv 3x3; max-pool 2x2
* 4 x conv 3x3, the first three each followed by dropout 0.3; max-pool 2x2

fsFCNN (widths 48, 96, 512, 768; the public code does not expand "fs", and has no frequency
split: its first conv and its last two pools stride along time only, so it keeps 4x the
frequency resolution of FCNN, which matches the "frequency sub-sampling scheme" named in the
ICASSP 2021 version of the paper):

* input norm (affine); conv 5x5 stride (1, 2); conv 3x3; max-pool 3x3 stride 2 ("same")
* conv 3x3; conv 3x3; max-pool 3x3 stride 2
* conv 3x3; conv 3x3; max-pool 3x3 stride (1, 2); conv 3x3; conv 3x3; max-pool 3x3 (1, 2)
* conv 3x3 + dropout 0.5; conv 3x3 + dropout 0.5

Shared head: conv 1x1 to ``num_classes`` (``model.classifier``) -> norm (no affine) -> ReLU ->
norm (no affine) -> channel attention (ratio 2) -> global average pooling -> logits.
``model.classifier``'s input, which the analysis tools capture, is the last stage's map
(FCNN: ``(B, 576, 8, T / 16)``; fsFCNN: ``(B, 768, 32, ~T / 32)``).

Translation notes as in :mod:`l2bn.models.asc_resnet17` (symmetric "same" padding, norm
hyper-parameters of the factory, Keras ``he_normal``); ``logit_norm="bn"`` keeps the second
head norm a plain BatchNorm as the authors' Keras code did.

Parameters at 10 classes: FCNN 11,780,329 and fsFCNN 16,531,913 (conv and dense weights
plus the affine parameters of the norms that have them). The sources state no count that
we could find; tests check these against a layer-by-layer count of the source architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from l2bn.models.asc_layers import (
    ChannelAttention,
    NormLayer,
    conv,
    init_keras_style,
    plain_norm,
    resolve_logit_norm,
)
from l2bn.models.registry import register_model


def conv_norm_relu(
    in_channels: int,
    out_channels: int,
    norm_layer: NormLayer,
    kernel_size: int = 3,
    stride: int | tuple[int, int] = 1,
) -> list[nn.Module]:
    """conv -> norm (with affine) -> ReLU, the unit of both networks."""
    return [
        conv(in_channels, out_channels, kernel_size, stride),
        norm_layer(out_channels),
        nn.ReLU(),
    ]


class AttentionHead(nn.Module):
    """norm -> ReLU -> norm -> channel attention -> global average pooling, on class maps."""

    def __init__(self, num_classes: int, norm_layer: NormLayer, logit_norm: str) -> None:
        super().__init__()
        self.norm = plain_norm(norm_layer, num_classes)
        self.relu = nn.ReLU()
        self.logit_norm = plain_norm(resolve_logit_norm(norm_layer, logit_norm), num_classes)
        self.attention = ChannelAttention(num_classes, ratio=2)

    def forward(self, maps: Tensor) -> Tensor:
        maps = self.logit_norm(self.relu(self.norm(maps)))
        return self.attention(maps).mean(dim=(2, 3))


class FullyConvolutionalNet(nn.Module):
    """``features`` (conv stages) -> ``classifier`` (1x1 conv) -> ``head`` (attention + GAP)."""

    def __init__(
        self,
        features: nn.Sequential,
        width: int,
        num_classes: int,
        norm_layer: NormLayer,
        logit_norm: str,
    ) -> None:
        super().__init__()
        self.features = features
        self.classifier = conv(width, num_classes, kernel_size=1)
        self.head = AttentionHead(num_classes, norm_layer, logit_norm)
        init_keras_style(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.classifier(self.features(x)))


def _widths(widths: Sequence[int], count: int, model: str) -> list[int]:
    widths = [int(w) for w in widths]
    if len(widths) != count or min(widths) < 1:
        raise ValueError(f"{model} needs {count} positive widths, got {widths}")
    return widths


def build_fcnn(
    num_classes: int = 10,
    in_channels: int = 3,
    norm_layer: NormLayer = nn.BatchNorm2d,
    widths: Sequence[int] = (144, 288, 576),
    dropout: float = 0.3,
    logit_norm: str = "same",
) -> FullyConvolutionalNet:
    """Hu et al.'s FCNN with channel attention (see the module docstring)."""
    w1, w2, w3 = _widths(widths, 3, "fcnn")
    layers: list[nn.Module] = [norm_layer(in_channels)]
    layers += conv_norm_relu(in_channels, w1, norm_layer, kernel_size=5, stride=2)
    layers += conv_norm_relu(w1, w1, norm_layer)
    layers.append(nn.MaxPool2d(2))
    layers += conv_norm_relu(w1, w2, norm_layer) + conv_norm_relu(w2, w2, norm_layer)
    layers.append(nn.MaxPool2d(2))
    width = w2
    for index in range(4):
        layers += conv_norm_relu(width, w3, norm_layer)
        width = w3
        if index < 3:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.MaxPool2d(2))
    return FullyConvolutionalNet(nn.Sequential(*layers), w3, num_classes, norm_layer, logit_norm)


def build_fsfcnn(
    num_classes: int = 10,
    in_channels: int = 3,
    norm_layer: NormLayer = nn.BatchNorm2d,
    widths: Sequence[int] = (48, 96, 512, 768),
    dropout: float = 0.5,
    logit_norm: str = "same",
) -> FullyConvolutionalNet:
    """Hu et al.'s fsFCNN with channel attention (see the module docstring)."""
    w1, w2, w3, w4 = _widths(widths, 4, "fsfcnn")

    def pool(stride: int | tuple[int, int]) -> nn.MaxPool2d:
        return nn.MaxPool2d(3, stride=stride, padding=1)

    layers: list[nn.Module] = [norm_layer(in_channels)]
    layers += conv_norm_relu(in_channels, w1, norm_layer, kernel_size=5, stride=(1, 2))
    layers += conv_norm_relu(w1, w1, norm_layer)
    layers.append(pool(2))
    layers += conv_norm_relu(w1, w2, norm_layer) + conv_norm_relu(w2, w2, norm_layer)
    layers.append(pool(2))
    layers += conv_norm_relu(w2, w3, norm_layer) + conv_norm_relu(w3, w3, norm_layer)
    layers.append(pool((1, 2)))
    layers += conv_norm_relu(w3, w3, norm_layer) + conv_norm_relu(w3, w3, norm_layer)
    layers.append(pool((1, 2)))
    layers += [*conv_norm_relu(w3, w4, norm_layer), nn.Dropout(dropout)]
    layers += [*conv_norm_relu(w4, w4, norm_layer), nn.Dropout(dropout)]
    return FullyConvolutionalNet(nn.Sequential(*layers), w4, num_classes, norm_layer, logit_norm)


@register_model("fcnn")
def fcnn(num_classes: int, in_channels: int, norm_layer: NormLayer, **kwargs) -> nn.Module:
    """Hu et al.'s FCNN (DCASE 2020), ``widths=`` (3 values) to change its size."""
    return build_fcnn(num_classes, in_channels, norm_layer, **kwargs)


@register_model("fsfcnn")
def fsfcnn(num_classes: int, in_channels: int, norm_layer: NormLayer, **kwargs) -> nn.Module:
    """Hu et al.'s fsFCNN (DCASE 2020), ``widths=`` (4 values) to change its size."""
    return build_fsfcnn(num_classes, in_channels, norm_layer, **kwargs)
