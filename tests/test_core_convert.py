"""convert_bn_to_l2bn / convert_l2bn_to_bn on a small ResNet (paper Table 4 needs a predicate)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

import l2bn
from l2bn import L2BatchNorm1d, L2BatchNorm2d, convert_bn_to_l2bn, convert_l2bn_to_bn


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class TinyResNet(nn.Module):
    def __init__(self, c: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.stage1 = Block(c)
        self.stage2 = Block(c)
        self.head_bn = nn.BatchNorm1d(c)
        self.classifier = nn.Linear(c, classes)

    def forward(self, x):
        x = self.stage2(self.stage1(torch.relu(self.stem(x))))
        return self.classifier(self.head_bn(x.mean((2, 3))))


def _bn_layers(model):
    # BatchNorm and L2BN layers (L2BN derives from _NormBase, not _BatchNorm).
    return {n: m for n, m in model.named_modules() if isinstance(m, _NormBase)}


def test_converts_every_batchnorm_keeping_state():
    torch.manual_seed(0)
    model = TinyResNet().double()
    model(torch.randn(4, 3, 8, 8, dtype=torch.float64))  # non-trivial running stats
    model.stage1.bn2.weight.requires_grad_(False)
    model.eval()
    before = {
        n: (m.weight, m.bias, m.running_mean, m.running_var) for n, m in _bn_layers(model).items()
    }
    converted = convert_bn_to_l2bn(model)
    assert converted is model
    layers = _bn_layers(model)
    assert set(layers) == set(before)
    for name, m in layers.items():
        assert l2bn.is_l2_batch_norm(m), name
        assert type(m) is (L2BatchNorm1d if name == "head_bn" else L2BatchNorm2d)
        assert not m.training
        w, b, rm, rv = before[name]
        assert m.weight is w and m.bias is b and m.running_mean is rm and m.running_var is rv
        assert m.weight.dtype == torch.float64
    assert not model.stage1.bn2.weight.requires_grad
    # ... and back to plain BatchNorm.
    convert_l2bn_to_bn(model)
    assert all(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in _bn_layers(model).values())
    assert model.stage1.bn1.running_mean is before["stage1.bn1"][2]


def test_output_changes_after_conversion():
    """The converted model really computes something else (catches a no-op conversion)."""
    torch.manual_seed(1)
    model = TinyResNet()
    x = torch.randn(6, 3, 8, 8) * torch.logspace(-1, 1, 6).view(-1, 1, 1, 1)
    y_bn = model(x)
    y_l2 = convert_bn_to_l2bn(model)(x)
    assert (y_bn - y_l2).abs().max() > 1e-3


def test_predicate_selects_layers():
    model = TinyResNet()
    seen = []

    def only_stage1(name, module):
        seen.append(name)
        return name.startswith("stage1.")

    convert_bn_to_l2bn(model, only_stage1)
    kinds = {n: l2bn.is_l2_batch_norm(m) for n, m in _bn_layers(model).items()}
    assert kinds == {
        "stem.1": False,
        "stage1.bn1": True,
        "stage1.bn2": True,
        "stage2.bn1": False,
        "stage2.bn2": False,
        "head_bn": False,
    }
    assert set(seen) == set(kinds)


def test_root_module_and_options():
    bn = nn.BatchNorm2d(3, momentum=None, eps=1e-3)
    m = convert_bn_to_l2bn(bn, scale=False, l2_eps=1e-6)
    assert isinstance(m, L2BatchNorm2d) and m is not bn
    assert m.momentum is None and m.eps == 1e-3 and not m.scale and m.l2_eps == 1e-6


def test_batchnorm_checkpoint_loads_into_converted_model():
    torch.manual_seed(2)
    source = TinyResNet()
    source(torch.randn(4, 3, 8, 8))
    target = convert_bn_to_l2bn(TinyResNet())
    target.load_state_dict(source.state_dict(), strict=True)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


def test_training_step_reduces_loss():
    torch.manual_seed(3)
    model = convert_bn_to_l2bn(TinyResNet())
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


KINDS = (
    "forward_pre",
    "forward",
    "forward_kwargs",
    "backward_pre",
    "backward",
    "state_dict",
    "load_pre",
    "load_post",
)


def _hooked(layer: nn.Module, calls: dict[str, list[nn.Module]]) -> list:
    """Registers one hook of each kind on ``layer``; each records the module it was given."""

    def record(kind):
        def hook(module, *args, **kwargs):
            calls.setdefault(kind, []).append(module)

        return hook

    return [
        layer.register_forward_pre_hook(record("forward_pre")),
        layer.register_forward_hook(record("forward")),
        layer.register_forward_hook(record("forward_kwargs"), with_kwargs=True),
        layer.register_full_backward_pre_hook(record("backward_pre")),
        layer.register_full_backward_hook(record("backward")),
        layer.register_state_dict_post_hook(record("state_dict")),
        layer.register_load_state_dict_pre_hook(record("load_pre")),
        layer.register_load_state_dict_post_hook(record("load_post")),
    ]


def test_conversion_keeps_hooks_both_ways():
    # convert_bn_to_l2bn and convert_l2bn_to_bn used to drop them (0 calls after conversion)
    torch.manual_seed(0)
    calls: dict[str, list[nn.Module]] = {}
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    handles = _hooked(model[1], calls)
    x = torch.randn(2, 3, 5, 5)
    for convert, kind in (
        (convert_bn_to_l2bn, L2BatchNorm2d),
        (convert_l2bn_to_bn, nn.BatchNorm2d),
    ):
        calls.clear()
        model = convert(model)
        layer = model[1]
        assert type(layer) is kind
        model(x).sum().backward()
        model.load_state_dict(model.state_dict())
        assert sorted(calls) == sorted(KINDS)
        assert all(modules == [layer] for modules in calls.values()), calls
    # the handles returned before the conversions still remove the hooks
    for handle in handles:
        handle.remove()
    calls.clear()
    model(x).sum().backward()
    model.load_state_dict(model.state_dict())
    assert calls == {}


def test_converting_the_root_layer_keeps_its_hooks():
    calls = []
    bn = nn.BatchNorm1d(3)
    bn.register_forward_hook(lambda m, i, o: calls.append(m))
    layer = convert_bn_to_l2bn(bn)
    layer(torch.randn(4, 3))
    assert calls == [layer]


def test_converting_a_model_without_batchnorm_warns():
    """A model with no BatchNorm (a norm-free or GroupNorm network) is left as it was: say so,
    instead of returning it as if it now had L2BN. Converting twice stays quiet."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.ReLU())
    with pytest.warns(l2bn.ConversionWarning, match="no BatchNorm layer.*nothing converted"):
        out, report = convert_bn_to_l2bn(model, return_report=True)
    assert out is model and not report.converted
    converted = convert_bn_to_l2bn(TinyResNet())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_bn_to_l2bn(converted)  # already L2BN: nothing to say


@pytest.mark.parametrize("given", [None, nn.Sequential, lambda: None])
def test_converters_name_an_argument_that_is_not_a_module(given):
    """A class, a function or None failed inside the walk ("'NoneType' object has no
    attribute 'named_children'", "missing 1 required positional argument: 'self'")."""
    for name, convert in (
        ("convert_bn_to_l2bn", l2bn.convert_bn_to_l2bn),
        ("convert_l2bn_to_bn", l2bn.convert_l2bn_to_bn),
        ("convert_sync_l2batchnorm", l2bn.convert_sync_l2batchnorm),
        ("convert_sync_batchnorm", l2bn.convert_sync_batchnorm),
        ("freeze", l2bn.freeze),
        ("unfreeze", l2bn.unfreeze),
    ):
        with pytest.raises(TypeError, match=rf"l2bn.{name}: expected a torch.nn.Module instance"):
            convert(given)
