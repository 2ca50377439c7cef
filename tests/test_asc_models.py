"""Acoustic-scene models of Table 6 (ResNet-17, FCNN, fsFCNN) with BN, L2BN and registry norms.

Forward/backward runs use the real input size (3 x 128 mel bands x 400-frame crops and the
full 423 frames) with reduced channel widths, so the whole file stays fast on 2 CPU cores;
the full-width models are built on the meta device for their parameter counts. Set
L2BN_ASC_FULL=1 to also run the full-width models at full length (10-30 s per
forward+backward on 2 idle cores).
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from l2bn import L2BatchNorm2d, is_l2_batch_norm
from l2bn.models import create_model, list_models
from l2bn.models.asc_layers import ChannelAttention, init_keras_style, plain_norm
from l2bn.norms import create_norm, get_norm_layer, list_norms

SMALL = {
    "asc_resnet17": {"base_filters": 2},
    "fcnn": {"widths": (4, 8, 8)},
    "fsfcnn": {"widths": (4, 8, 8, 8)},
}
MODELS = tuple(SMALL)


def conv_params(layers: list[tuple[int, int, int]]) -> int:
    return sum(cin * cout * k * k for cin, cout, k in layers)


def resnet17_count(base: int = 48, inputs: int = 3, classes: int = 10) -> int:
    """McDonnell & Gao's layer list: per path a 3x3 stem, 4 stages x 2 blocks x 2 convs (3x3)
    with widths base * 2**s; then 1x1 convs 8*base -> 32*base -> classes. Only the two input
    norms have affine parameters (Keras center/scale=True there, False elsewhere)."""
    path = [(inputs, base, 3)]
    width = base
    for stage in range(4):
        out = base * 2**stage
        path += [(width, out, 3), (out, out, 3), (out, out, 3), (out, out, 3)]
        width = out
    fusion = [(8 * base, 32 * base, 1), (32 * base, classes, 1)]
    return 2 * conv_params(path) + conv_params(fusion) + 2 * (2 * inputs)


def fcnn_count(widths: tuple[int, ...], inputs: int = 3, classes: int = 10, fs: bool = False):
    """Hu et al.'s layer lists; every conv but the class one has an affine norm after it."""
    if fs:
        w1, w2, w3, w4 = widths
        layers = [(inputs, w1, 5), (w1, w1, 3), (w1, w2, 3), (w2, w2, 3), (w2, w3, 3)]
        layers += [(w3, w3, 3)] * 3 + [(w3, w4, 3), (w4, w4, 3)]
        last = w4
    else:
        w1, w2, w3 = widths
        layers = [(inputs, w1, 5), (w1, w1, 3), (w1, w2, 3), (w2, w2, 3), (w2, w3, 3)]
        layers += [(w3, w3, 3)] * 3
        last = w3
    affine = 2 * inputs + sum(2 * cout for _, cout, _ in layers)
    hidden = classes // 2
    attention = classes * hidden + hidden + hidden * classes + classes
    return conv_params(layers) + last * classes + affine + attention


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("asc_resnet17", resnet17_count()),
        ("fcnn", fcnn_count((144, 288, 576))),
        ("fsfcnn", fcnn_count((48, 96, 512, 768), fs=True)),
    ],
)
def test_parameter_counts_match_the_source_layer_lists(name: str, expected: int) -> None:
    with torch.device("meta"):
        model = create_model(name, num_classes=10, in_channels=3, norm_layer="bn")
    assert count(model) == expected
    assert expected == {"asc_resnet17": 12_966_444, "fcnn": 11_780_329, "fsfcnn": 16_531_913}[name]


def test_registered() -> None:
    assert {"asc_resnet17", "fcnn", "fsfcnn"} <= set(list_models())


def _small(name: str, norm: str | object = "bn", **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return create_model(
        name, num_classes=10, in_channels=3, norm_layer=norm, **SMALL[name], **kwargs
    )


@pytest.mark.parametrize("frames", [400, 423])
@pytest.mark.parametrize("norm", ["bn", "l2bn"])
@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_at_clip_length(name: str, norm: str, frames: int) -> None:
    model = _small(name, norm)
    x = torch.rand(2, 3, 128, frames)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([1, 7]))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(bool(g.abs().sum() > 0) for g in grads) >= len(grads) - 2


@pytest.mark.parametrize("name", MODELS)
def test_l2bn_replaces_every_norm(name: str) -> None:
    bn = _small(name, "bn")
    l2 = _small(name, "l2bn")
    bn_sites = [n for n, m in bn.named_modules() if type(m) is nn.BatchNorm2d]
    assert bn_sites
    l2_sites = [n for n, m in l2.named_modules() if is_l2_batch_norm(m)]
    assert l2_sites == bn_sites
    assert not any(type(m) is nn.BatchNorm2d for m in l2.modules())
    # the authors' Keras code kept the norm of the class maps plain: logit_norm="bn"
    kept = _small(name, "l2bn", logit_norm="bn")
    plain = [n for n, m in kept.named_modules() if type(m) is nn.BatchNorm2d]
    assert len(plain) == 1 and plain[0].endswith("logit_norm")


@pytest.mark.parametrize("name", MODELS)
def test_l2bn_ignores_a_sample_scale_and_bn_does_not(name: str) -> None:
    """L2BN normalizes each whole sample first, so scaling one clip changes nothing;
    with BN the batch statistics (and every clip's output) change."""
    x = torch.rand(3, 3, 128, 32)
    scaled = x.clone()
    scaled[0] *= 5.0
    for norm, invariant in (("l2bn", True), ("bn", False)):
        model = _small(name, norm)
        outputs = []
        for batch in (x, scaled):
            torch.manual_seed(1)  # same dropout masks
            outputs.append(model(batch))
        same = torch.allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
        assert same is invariant, f"{name} with {norm}"


@pytest.mark.parametrize("name", MODELS)
def test_norms_without_affine_where_the_source_has_none(name: str) -> None:
    model = _small(name, "l2bn")
    norms = [m for m in model.modules() if isinstance(m, L2BatchNorm2d)]
    with_affine = [m for m in norms if m.weight is not None]
    without = [m for m in norms if m.weight is None]
    assert without and all(not m.affine and m.bias is None for m in without)
    if name == "asc_resnet17":
        assert len(with_affine) == 2  # only the input norm of each path
    else:
        assert len(without) == 2  # only the two norms of the class maps


@pytest.mark.parametrize("name", MODELS)
def test_classifier_is_the_class_map_convolution(name: str) -> None:
    model = _small(name).eval()
    assert isinstance(model.classifier, nn.Conv2d)
    assert model.classifier.out_channels == 10 and model.classifier.kernel_size == (1, 1)
    captured = []
    handle = model.classifier.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    with torch.no_grad():
        model(torch.rand(2, 3, 128, 400))
    handle.remove()
    (features,) = captured
    assert features.dim() == 4 and features.shape[:2] == (2, model.classifier.in_channels)


@pytest.mark.parametrize("norm", [n for n in list_norms() if n not in ("bn", "l2bn")])
def test_every_registry_norm_plugs_in(norm: str) -> None:
    model = create_model("fcnn", norm_layer=norm, widths=(8, 16, 16))
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    for module in (model.head.norm, model.head.logit_norm):
        trainable = [p for p in module.parameters() if p.requires_grad]
        names = {n.split(".")[-1] for n, p in module.named_parameters() if p.requires_grad}
        assert not ({"weight", "bias"} & names), f"{norm}: affine left in {trainable}"


@pytest.mark.parametrize("norm", list_norms())
def test_plain_norm_is_the_norm_built_without_affine(norm: str) -> None:
    # BCN has two affine pairs (its BatchNorm half's bn_weight / bn_bias too): all go.
    plain = plain_norm(get_norm_layer(norm), 8)
    reference = create_norm(norm, 8, affine=False)
    assert plain.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(4, 8, 3, 3)
    torch.testing.assert_close(plain(x), reference(x))


def test_plain_norm_handles_torch_norms_and_unflagged_ones() -> None:
    group = plain_norm(lambda c: nn.GroupNorm(2, c), 8)
    assert group.weight is None and group.bias is None and not group.affine

    class Custom(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(c))
            self.bias = nn.Parameter(torch.zeros(c))

        def forward(self, x):
            return x * self.weight[:, None, None] + self.bias[:, None, None]

    custom = plain_norm(Custom, 4)
    assert not custom.weight.requires_grad and not custom.bias.requires_grad


def test_channel_attention_is_cbam_channel_branch() -> None:
    torch.manual_seed(0)
    attention = ChannelAttention(10, ratio=2)
    x = torch.randn(2, 10, 5, 7)
    mlp = attention.mlp
    gate = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))
    assert torch.allclose(attention(x), x * gate[:, :, None, None])
    assert mlp[0].out_features == 5


def test_kernels_follow_keras_he_normal() -> None:
    # The recipes ran Keras 2.2.4, whose he_normal is VarianceScaling(2, "fan_in", "normal"):
    # a normal of std sqrt(2 / fan_in) / 0.8796 cut at two of its standard deviations, so
    # that the kept samples have std sqrt(2 / fan_in) (0.8796 is the std of a unit normal
    # truncated to [-2, 2]). A cut at 2 * sqrt(2 / fan_in) leaves them 12% narrower.
    torch.manual_seed(0)
    kernel = nn.Conv2d(64, 64, 3, bias=False)  # fan_in 576, 36,864 samples
    dense = nn.Linear(512, 128)  # fan_in 512, 65,536 samples
    init_keras_style(nn.Sequential(kernel, dense))
    for weight, fan_in in ((kernel.weight, 64 * 9), (dense.weight, 512)):
        target = (2.0 / fan_in) ** 0.5
        assert abs(weight.std().item() / target - 1) < 0.02
        cut = 2 * target / 0.87962566103423978
        assert 2 * target < weight.abs().max().item() <= cut
    assert torch.equal(dense.bias, torch.zeros(128))
    model = create_model("asc_resnet17", base_filters=16)  # fusion conv: 128 -> 512, 1x1
    weight = model.fusion[-1].weight
    assert abs(weight.std().item() / (2.0 / weight[0].numel()) ** 0.5 - 1) < 0.02


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="logit_norm"):
        create_model("fcnn", logit_norm="gn", widths=(4, 4, 4))
    with pytest.raises(ValueError, match="3 positive widths"):
        create_model("fcnn", widths=(4, 4))
    with pytest.raises(ValueError, match="4 positive widths"):
        create_model("fsfcnn", widths=(4, 4, 4))
    with pytest.raises(ValueError, match="base_filters"):
        create_model("asc_resnet17", base_filters=0)


@pytest.mark.skipif(not os.environ.get("L2BN_ASC_FULL"), reason="set L2BN_ASC_FULL=1 (slow)")
@pytest.mark.parametrize("norm", ["bn", "l2bn"])
@pytest.mark.parametrize("name", MODELS)
def test_full_width_full_length(name: str, norm: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, norm_layer=norm)
    for frames in (400, 423):
        model(torch.rand(2, 3, 128, frames)).sum().backward()
