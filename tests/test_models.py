"""l2bn.models: registry, published sizes, forward/backward with every norm, L2BN swap."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from l2bn import is_l2_batch_norm
from l2bn.models import create_model, list_models, register_model
from l2bn.models.cifar_resnet import CifarResNet
from l2bn.models.densenet import CifarDenseNet
from l2bn.models.imagenet_resnet import Bottleneck
from l2bn.models.registry import _BUILDERS
from l2bn.models.regnet import RegNet, RegNetConfig
from l2bn.models.resnext import CifarResNeXt
from l2bn.models.vgg import CifarVGG
from l2bn.norms import create_norm, get_norm_layer, list_norms

PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
CIFAR_MODELS = [
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "densenet40_12",
    "densenet_bc_100_12", "vgg16", "vgg19", "resnext29_8x64d", "regnetx", "regnety",
]  # fmt: skip
IMAGENET_MODELS = ["resnet50", "resnet101", "resnext50_32x4d", "resnext101_32x4d"]
PAPER_MODELS = CIFAR_MODELS + IMAGENET_MODELS

# Published sizes, in millions of parameters: (name, classes, figure).
PUBLISHED_SIZES = [
    # He et al. 2016, Table 6 (CIFAR-10).
    ("resnet20", 10, 0.27),
    ("resnet32", 10, 0.46),
    ("resnet44", 10, 0.66),
    ("resnet56", 10, 0.85),
    ("resnet110", 10, 1.7),
    # Huang et al. 2017, Table 2 (one figure for C10 and C100; 100 classes for BC: 0.800M,
    # 10 classes: 0.769M; DenseNet-40-12 at 10 classes: 1.02M).
    ("densenet40_12", 10, 1.0),
    ("densenet_bc_100_12", 100, 0.8),
    # VGG-19 CIFAR variant (conv-BN-ReLU, one linear layer): Liu et al. 2017, "Network
    # Slimming", Table 1, VGGNet baseline on CIFAR-10, 20.04M. VGG-16 has no published
    # figure for this variant that we know of: 14.7M is configuration D's thirteen
    # convolutions with biases (Simonyan & Zisserman 2015, Table 1) plus norms and a
    # 512x10 linear layer, counted by hand (Li et al. 2017 report 15.0M for a variant
    # with an extra 512-unit layer).
    ("vgg16", 10, 14.7),
    ("vgg19", 10, 20.04),
    # Xie et al. 2017, Table 7 (CIFAR-10).
    ("resnext29_8x64d", 10, 34.4),
    # Radosavovic et al. 2020, appendix tables of RegNetX / RegNetY models (ImageNet);
    # 400MF: see test_regnet_400mf_parameter_count.
    ("regnetx", 1000, 2.7),
    ("regnety", 1000, 3.2),
    # He et al. 2016 / Xie et al. 2017 (ImageNet-1K), the standard figures.
    ("resnet50", 1000, 25.6),
    ("resnet101", 1000, 44.5),
    ("resnext50_32x4d", 1000, 25.0),
    ("resnext101_32x4d", 1000, 44.2),
]

# Classes at which each model's published size is stated (and the zoo fixture builds).
PUBLISHED_CLASSES = {name: classes for name, classes, _ in PUBLISHED_SIZES}


pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class Zoo:
    """One paper model built twice: with BN (3 channels) and with L2BN (1 channel)."""

    name: str
    classes: int
    bn: nn.Module
    l2bn: nn.Module


@pytest.fixture(scope="module", params=PAPER_MODELS)
def zoo(request) -> Zoo:
    """Module scope: pytest groups the tests by model, so each model is built once."""
    name = request.param
    classes = PUBLISHED_CLASSES[name]
    torch.manual_seed(0)
    bn = create_model(name, num_classes=classes)
    l2 = create_model(name, num_classes=classes, in_channels=1, norm_layer="l2bn")
    return Zoo(name, classes, bn, l2)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _forward_backward(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(x)
    assert out.shape == (x.shape[0], num_classes)
    out.logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    model.zero_grad(set_to_none=True)


def _train_input(name: str, channels: int) -> torch.Tensor:
    """Batch 2: 28x28 (Fashion-MNIST size) for CIFAR models, 32x32 for ImageNet models,
    12x12 for ResNeXt-29 (5 GFLOPs per 32x32 image; 28x28 is checked in eval)."""
    size = 32 if name in IMAGENET_MODELS else 12 if name == "resnext29_8x64d" else 28
    return torch.randn(2, channels, size, size)


def test_every_paper_model_is_registered():
    assert set(PAPER_MODELS) <= set(list_models())


def test_parameter_count_matches_the_published_figure(zoo):
    millions = {name: m for name, _, m in PUBLISHED_SIZES}[zoo.name]
    count = _count(zoo.bn)
    assert abs(count / 1e6 - millions) <= 0.02 * millions, f"{zoo.name}: {count}"


@pytest.mark.parametrize(("name", "millions"), [("regnetx", 5.2), ("regnety", 4.3)])
def test_regnet_400mf_parameter_count(name, millions):
    count = _count(create_model(name, num_classes=1000, config="400mf"))
    assert abs(count / 1e6 - millions) <= 0.02 * millions, f"{name}: {count}"


@pytest.mark.parametrize(
    ("name", "config", "cifar", "imagenet"),
    [
        ("regnetx", "200mf", 2_684_792, 2_684_792),
        ("regnety", "200mf", 3_162_996, 3_162_996),
        ("regnetx", "400mf", 5_156_424, 5_157_512),  # stage 1 as wide as the stem
        ("regnety", "400mf", 4_344_144, 4_344_144),
    ],
)
def test_regnet_parameter_count_at_cifar_and_imagenet_strides(name, config, cifar, imagenet):
    with torch.device("meta"):
        small = create_model(name, num_classes=1000, config=config)
        large = create_model(
            name, num_classes=1000, config=config, stem_stride=2, stage_strides=(2, 2, 2, 2)
        )
    assert (_count(small), _count(large)) == (cifar, imagenet)


def test_bn_model_forward_backward(zoo):
    torch.manual_seed(0)
    _forward_backward(zoo.bn, _train_input(zoo.name, 3), zoo.classes)


def test_l2bn_model_forward_backward_on_single_channel_input(zoo):
    torch.manual_seed(0)
    _forward_backward(zoo.l2bn, _train_input(zoo.name, 1), zoo.classes)


def test_single_channel_28x28_input_in_eval(zoo):
    zoo.l2bn.eval()
    with torch.no_grad():
        assert zoo.l2bn(torch.randn(1, 1, 28, 28)).shape == (1, zoo.classes)
    zoo.l2bn.train()


def test_l2bn_replaces_every_batchnorm(zoo):
    bn_layers = [n for n, m in zoo.bn.named_modules() if type(m) in PLAIN_BN]
    l2_layers = [n for n, m in zoo.l2bn.named_modules() if is_l2_batch_norm(m)]
    assert bn_layers and l2_layers == bn_layers
    assert not [n for n, m in zoo.l2bn.named_modules() if type(m) in PLAIN_BN]
    assert all(is_l2_batch_norm(m) for m in zoo.l2bn.modules() if isinstance(m, _BatchNorm))


def test_every_norm_builds_at_every_width_of_the_model(zoo):
    widths = sorted({m.num_features for m in zoo.bn.modules() if type(m) in PLAIN_BN})
    for norm in list_norms():
        for width in widths:
            layer = create_norm(norm, width)
            groups = getattr(layer, "num_groups", 1)
            assert width % groups == 0, (norm, width)


def test_classifier_is_the_last_linear(zoo):
    for model in (zoo.bn, zoo.l2bn):
        assert isinstance(model.classifier, nn.Linear)
        assert model.classifier.out_features == zoo.classes
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert linears[-1] is model.classifier


# Every family's code path with every norm, on small members of the family (the full
# models' widths are covered by test_every_norm_builds_at_every_width_of_the_model).
TINY_REGNET = RegNetConfig(depth=4, w0=8, wa=8.0, wm=2.0, group_width=4)  # 3 stages
FAMILY_SAMPLES = {
    "cifar_resnet": lambda f: CifarResNet(8, 5, 3, f),
    "densenet": lambda f: CifarDenseNet(10, 6, False, 1.0, 5, 3, f),
    "densenet_bc": lambda f: CifarDenseNet(16, 6, True, 0.5, 5, 3, f),
    "vgg": lambda f: CifarVGG([8, "M", 16, "M", 16, 16, "M"], 5, 3, f),
    "resnext": lambda f: CifarResNeXt(5, 3, f, 11, 2, 4),
    "regnetx": lambda f: RegNet(TINY_REGNET, False, 5, 3, f, 1, (1, 2, 2)),
    "regnety": lambda f: RegNet(TINY_REGNET, True, 5, 3, f, 1, (1, 2, 2)),
    "imagenet_bottleneck": lambda f: nn.Sequential(
        Bottleneck(16, 4, 1, 1, 64, f), Bottleneck(16, 8, 2, 2, 16, f)
    ),
}


@pytest.mark.parametrize("family", FAMILY_SAMPLES)
def test_every_family_trains_with_every_norm(family):
    torch.manual_seed(0)
    channels = 16 if family == "imagenet_bottleneck" else 3
    x = torch.randn(2, channels, 8, 8)
    for norm in list_norms():
        model = FAMILY_SAMPLES[family](get_norm_layer(norm))
        model(x).square().mean().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (norm, name)


@pytest.mark.parametrize("norm", list_norms())
def test_resnet20_with_every_norm_on_fashion_mnist_sized_input(norm):
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1, norm_layer=norm)
    _forward_backward(model, torch.randn(2, 1, 28, 28), 10)


def test_l2bn_model_loads_bn_weights_and_computes_something_else():
    torch.manual_seed(0)
    bn_model = create_model("resnet20", num_classes=10, in_channels=1)
    l2_model = create_model("resnet20", num_classes=10, in_channels=1, norm_layer="l2bn")
    l2_model.load_state_dict(bn_model.state_dict())
    x = torch.randn(4, 1, 28, 28) * torch.tensor([0.1, 1, 10, 100]).view(4, 1, 1, 1)
    assert not torch.allclose(bn_model(x), l2_model(x), atol=1e-3)


def test_classifier_input_can_be_captured():
    model = create_model("resnet20", num_classes=10, in_channels=1).eval()
    captured = []
    model.classifier.register_forward_hook(lambda m, inputs, out: captured.append(inputs[0]))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        model(x)
        features = model.forward_features(x)
    torch.testing.assert_close(captured[0], features)
    assert features.shape == (3, 64)


def test_initialization_follows_the_papers():
    torch.manual_seed(0)
    model = create_model("resnet56", num_classes=10)
    conv = model.layer3[0].conv2  # 64 x 64 x 3 x 3: fan_out = 576
    expected_std = (2.0 / (64 * 9)) ** 0.5
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.05
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    assert torch.equal(model.classifier.bias, torch.zeros(10))


def test_callable_norm_layer_is_used():
    made = []

    def norm(c: int) -> nn.Module:
        made.append(c)
        return nn.GroupNorm(1, c)

    model = create_model("resnet20", num_classes=10, norm_layer=norm)
    assert len(made) == 19 and made[0] == 16
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())


def test_norm_kwargs_reach_the_norm():
    model = create_model("resnet20", norm_layer="gn", norm_kwargs={"channels_per_group": 8})
    assert model.norm1.num_groups == 2


def test_unknown_model_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet21'") as info:
        create_model("resnet21")
    for name in PAPER_MODELS:
        assert name in str(info.value)


def test_unknown_norm_name_in_create_model():
    with pytest.raises(ValueError, match=r"unknown norm 'batch'.*l2bn"):
        create_model("resnet20", norm_layer="batch")


def test_unexpected_builder_argument_is_rejected():
    with pytest.raises(TypeError):
        create_model("resnet20", widen_factor=2)
    with pytest.raises(ValueError, match="config"):
        create_model("regnetx", config="800mf")


def test_register_model_adds_a_builder():
    @register_model("tiny_test_net")
    def tiny(num_classes, in_channels, norm_layer, width=4):
        net = nn.Sequential(nn.Conv2d(in_channels, width, 3), norm_layer(width))
        net.classifier = nn.Linear(width, num_classes)
        return net

    try:
        model = create_model("tiny_test_net", num_classes=3, in_channels=2, norm_layer="l2bn")
        assert "tiny_test_net" in list_models()
        assert is_l2_batch_norm(model[1]) and model.classifier.out_features == 3
        with pytest.raises(ValueError, match="already registered"):
            register_model("tiny_test_net")(lambda *a, **k: None)
    finally:
        _BUILDERS.pop("tiny_test_net", None)
