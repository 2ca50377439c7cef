"""Issue 13: the converters handle every BatchNorm kind explicitly, and say what they left."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch import nn

import l2bn
from _timm import import_timm
from l2bn import (
    L2BatchNorm1d,
    L2BatchNorm2d,
    L2BatchNorm3d,
    L2BatchNormAct2d,
    LazyL2BatchNorm2d,
    SyncL2BatchNorm,
    SyncL2BatchNormAct,
)
from l2bn.norms import LayerNormBatchNorm2d


def _randomize(layer: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in (layer.weight, layer.bias, layer.running_mean):
            t.copy_(torch.rand(t.shape, generator=g) - 0.5)
        layer.running_var.copy_(torch.rand(layer.running_var.shape, generator=g) + 0.5)
        layer.num_batches_tracked.fill_(5)
    return layer


def _l2bn_reference(layer: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """A plain L2BN layer with ``layer``'s state: what the converted layer must compute."""
    reference = cls(layer.num_features, layer.eps, layer.momentum)
    reference.load_state_dict(layer.state_dict())
    return reference.train(layer.training)


@pytest.mark.parametrize(
    "bn_cls,l2_cls,shape",
    [
        (nn.BatchNorm1d, L2BatchNorm1d, (6, 3)),
        (nn.BatchNorm2d, L2BatchNorm2d, (6, 3, 4, 4)),
        (nn.BatchNorm3d, L2BatchNorm3d, (6, 3, 2, 3, 3)),
        (nn.SyncBatchNorm, SyncL2BatchNorm, (6, 3, 4, 4)),
    ],
)
def test_every_torch_batchnorm_becomes_l2bn_and_back(bn_cls, l2_cls, shape):
    bn = _randomize(bn_cls(3)).eval()
    x = torch.randn(shape) * torch.logspace(-1, 1, shape[0]).view(-1, *[1] * (len(shape) - 1))
    model = nn.Sequential(bn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        converted, report = l2bn.convert_bn_to_l2bn(model, return_report=True)
    layer = converted[0]
    assert type(layer) is l2_cls and layer.weight is bn.weight
    expected = _l2bn_reference(layer, L2BatchNorm2d if l2_cls is SyncL2BatchNorm else l2_cls)
    torch.testing.assert_close(layer(x), expected(x))
    assert (layer(x) - bn(x)).abs().max() > 0.1  # really not BatchNorm any more
    assert [(c.path, c.source, c.target) for c in report.converted] == [
        ("0", bn_cls.__name__, l2_cls.__name__)
    ]
    back, report = l2bn.convert_l2bn_to_bn(converted, return_report=True)
    assert type(back[0]) is bn_cls and back[0].running_mean is bn.running_mean
    torch.testing.assert_close(back[0](x), bn(x))
    assert len(report.converted) == 1 and not report.left


def test_lazy_batchnorm_becomes_lazy_l2bn_and_stays_l2bn_after_first_forward():
    model = nn.Sequential(nn.Conv2d(3, 5, 1), nn.LazyBatchNorm2d(momentum=0.3))
    converted = l2bn.convert_bn_to_l2bn(model, l2_eps=1e-6, scale=False)
    assert type(converted[1]) is LazyL2BatchNorm2d
    x = torch.randn(4, 3, 4, 4) * torch.logspace(-1, 1, 4).view(-1, 1, 1, 1)
    y = converted(x)
    layer = converted[1]
    assert type(layer) is L2BatchNorm2d and layer.num_features == 5
    assert layer.momentum == 0.3 and layer.l2_eps == 1e-6 and layer.scale is False
    reference = L2BatchNorm2d(5, momentum=0.3, l2_eps=1e-6, scale=False)
    torch.testing.assert_close(y, reference(converted[0](x)))
    torch.testing.assert_close(layer.running_var, reference.running_var)
    # ... and back, before the first forward.
    lazy = l2bn.convert_l2bn_to_bn(nn.Sequential(LazyL2BatchNorm2d()))
    assert type(lazy[0]) is nn.LazyBatchNorm2d


def test_lazy_l2bn_takes_num_features_where_torch_leaves_it_zero():
    # torch's _LazyNormBase sets num_features only while a tensor is uninitialized: a lazy
    # layer without parameters or buffers, or one whose tensors load_state_dict has
    # materialized, kept num_features == 0, which BatchNorm ignores and L2BN refused.
    x = torch.randn(4, 3, 5, 5) * torch.logspace(-1, 1, 4).view(-1, 1, 1, 1)
    bare = l2bn.LazyL2BatchNorm2d(affine=False, track_running_stats=False, l2_eps=1e-6)
    y = bare(x)
    assert type(bare) is L2BatchNorm2d and bare.num_features == 3
    torch.testing.assert_close(y, L2BatchNorm2d(3, affine=False, l2_eps=1e-6)(x))
    assert (y - nn.functional.batch_norm(x, None, None, training=True)).abs().max() > 0.1

    source = _randomize(L2BatchNorm2d(3)).eval()
    loaded = LazyL2BatchNorm2d()
    loaded.load_state_dict(source.state_dict())
    loaded.eval()
    torch.testing.assert_close(loaded(x), source(x))
    assert type(loaded) is L2BatchNorm2d and loaded.num_features == 3
    with pytest.raises(ValueError, match="expected input with 3 channels"):
        loaded(torch.randn(4, 5, 5, 5))  # the loaded tensors' size, not the input's


def test_timm_norm_act_layers_keep_activation_and_drop():
    timm = import_timm()
    drop = nn.Dropout(0.0)
    bn = timm.layers.BatchNormAct2d(4, act_layer=nn.ReLU, drop_layer=lambda: drop)
    _randomize(bn).eval()
    before = bn.state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = l2bn.convert_bn_to_l2bn(nn.Sequential(bn))
    layer = out[0]
    assert type(layer) is L2BatchNormAct2d
    assert layer.drop is drop and isinstance(layer.act, nn.ReLU)
    assert list(layer.state_dict()) == list(before)  # timm's layout
    x = torch.randn(5, 4, 3, 3) * torch.logspace(-1, 1, 5).view(-1, 1, 1, 1)
    expected = torch.relu(_l2bn_reference(layer, L2BatchNorm2d)(x))
    torch.testing.assert_close(layer(x), expected)
    back = l2bn.convert_l2bn_to_bn(out)[0]
    assert type(back) is timm.layers.BatchNormAct2d and back.act is layer.act
    torch.testing.assert_close(back(x), bn(x))
    # timm's SyncBatchNormAct and back.
    synced = timm.layers.convert_sync_batchnorm(nn.Sequential(timm.layers.BatchNormAct2d(4)))
    l2 = l2bn.convert_bn_to_l2bn(synced)
    assert type(l2[0]) is SyncL2BatchNormAct and isinstance(l2[0].act, nn.ReLU)
    assert type(l2bn.convert_l2bn_to_bn(l2)[0]) is timm.layers.SyncBatchNormAct


def test_issue_example_batchnormact_is_converted():
    timm = import_timm()
    model = nn.Sequential(timm.layers.BatchNormAct2d(4, act_layer=nn.ReLU))
    assert type(l2bn.convert_bn_to_l2bn(model)[0]) is L2BatchNormAct2d


def test_unknown_batchnorm_subclass_warns_with_class_and_path_or_fails_when_strict():
    class MyBatchNorm(nn.BatchNorm2d):
        pass

    model = nn.Sequential(nn.Sequential(nn.BatchNorm2d(3), MyBatchNorm(3)))
    with pytest.warns(l2bn.ConversionWarning, match=r"0\.1 is a .*MyBatchNorm.*still BatchNorm"):
        _, report = l2bn.convert_bn_to_l2bn(model, return_report=True)
    assert type(model[0][0]) is L2BatchNorm2d and type(model[0][1]) is MyBatchNorm
    assert [(x.path, x.cls) for x in report.left] == [("0.1", "MyBatchNorm")]
    assert "left 0.1 (MyBatchNorm)" in str(report)
    with pytest.raises(TypeError, match="MyBatchNorm"):
        l2bn.convert_bn_to_l2bn(nn.Sequential(MyBatchNorm(3)), strict=True)
    # Excluded by the predicate: reported, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, report = l2bn.convert_bn_to_l2bn(
            nn.Sequential(MyBatchNorm(3)), lambda n, m: False, return_report=True
        )
    assert report.left[0].reason == "excluded by the predicate"

    # Registered: converted.
    class MyL2BatchNorm(L2BatchNorm2d):
        pass

    l2bn.register_conversion(MyBatchNorm, MyL2BatchNorm)
    try:
        assert type(l2bn.convert_bn_to_l2bn(MyBatchNorm(3))) is MyL2BatchNorm
    finally:
        from l2bn import convert

        convert._BN_TO_L2BN.pop(MyBatchNorm)
        convert._L2BN_TO_BN.pop(MyL2BatchNorm)


def test_frozen_batchnorm_classes_of_other_libraries_are_named():
    class FrozenBatchNorm2d(nn.Module):  # torchvision's and timm's are plain Modules
        def forward(self, x):
            return x

    with pytest.warns(l2bn.ConversionWarning, match=r"0 is a .*FrozenBatchNorm2d"):
        l2bn.convert_bn_to_l2bn(nn.Sequential(FrozenBatchNorm2d()))


def test_other_norms_of_the_paper_are_left_alone_quietly():
    model = nn.Sequential(LayerNormBatchNorm2d(3), nn.BatchNorm2d(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, report = l2bn.convert_bn_to_l2bn(model, return_report=True)
    assert type(model[0]) is LayerNormBatchNorm2d and type(model[1]) is L2BatchNorm2d
    assert report.left[0].reason == "another norm of l2bn.norms"


def test_reverse_converter_names_what_it_cannot_convert(caplog):
    class MyL2(L2BatchNorm2d):
        pass

    model = nn.Sequential(MyL2(3), l2bn.FrozenL2BatchNorm2d(3), L2BatchNorm2d(3))
    with pytest.warns(l2bn.ConversionWarning) as record:
        _, report = l2bn.convert_l2bn_to_bn(model, return_report=True)
    messages = " ".join(str(r.message) for r in record)
    assert "0 is a" in messages and "MyL2" in messages
    assert "1 is a" in messages and "unfreeze" in messages
    assert type(model[2]) is nn.BatchNorm2d and len(report.left) == 2
    with pytest.raises(TypeError, match="FrozenL2BatchNorm2d"):
        l2bn.convert_l2bn_to_bn(nn.Sequential(l2bn.FrozenL2BatchNorm2d(3)), strict=True)
    with caplog.at_level(logging.INFO, logger="l2bn.convert"):
        l2bn.convert_bn_to_l2bn(nn.Sequential(nn.BatchNorm2d(3)))
    assert "converted 1 layers (1 BatchNorm2d -> L2BatchNorm2d)" in caplog.text


def test_timm_twin_needs_timm_only_for_the_reverse_conversion(monkeypatch):
    layer = L2BatchNormAct2d(3, act_layer=nn.SiLU)  # built without naming a timm activation
    assert isinstance(layer.act, nn.SiLU)
    import l2bn.convert as convert
    import l2bn.norm_act as norm_act

    for module in (norm_act, convert):
        monkeypatch.setattr(module, "timm_norm_act", lambda load=False: None)
    with pytest.raises(RuntimeError, match="timm cannot be imported"):
        l2bn.convert_l2bn_to_bn(nn.Sequential(layer))
    with pytest.raises(ValueError, match="needs timm"):
        L2BatchNormAct2d(3, act_layer="silu")


def _weight_norm_old(layer: nn.Module) -> nn.Module:
    with warnings.catch_warnings():  # torch.nn.utils.weight_norm is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.utils.weight_norm(layer, "weight", dim=0)


def _weight_norm_parametrized(layer: nn.Module) -> nn.Module:
    return torch.nn.utils.parametrizations.weight_norm(layer, "weight", dim=0)


@pytest.mark.parametrize("apply", [_weight_norm_old, _weight_norm_parametrized])
def test_weight_normalized_layer_is_left_with_a_warning_naming_the_remedy(apply):
    # the old weight_norm crashed with "TypeError: cannot assign 'torch.FloatTensor' as
    # parameter 'weight'"; the parametrized one was called a BatchNorm class l2bn does not know
    model = nn.Sequential(nn.Conv2d(3, 4, 1), apply(nn.BatchNorm2d(4)), nn.BatchNorm2d(4))
    layer = model[1]
    with pytest.warns(
        l2bn.ConversionWarning,
        match=r"1 is a torch\.nn\.modules\.batchnorm\.BatchNorm2d, whose weight is computed "
        r"by a reparametrization.*still BatchNorm.*remove_parametrizations.*remove_weight_norm",
    ):
        _, report = l2bn.convert_bn_to_l2bn(model, return_report=True)
    assert model[1] is layer and type(model[2]) is L2BatchNorm2d
    assert [(x.path, x.cls) for x in report.left] == [("1", "BatchNorm2d")]
    model(torch.randn(2, 3, 4, 4))
    with pytest.raises(TypeError, match=r"l2bn\.convert_bn_to_l2bn: 1 is a .*BatchNorm2d, whose"):
        l2bn.convert_bn_to_l2bn(model, strict=True)
    # the reverse and the synchronizing converters say the same
    l2 = apply(L2BatchNorm2d(4))
    with pytest.warns(
        l2bn.ConversionWarning, match=r"root module is a .*L2BatchNorm2d.*still L2BN"
    ):
        assert l2bn.convert_l2bn_to_bn(l2) is l2
    for convert in (l2bn.convert_sync_l2batchnorm, l2bn.convert_sync_batchnorm):
        for bn in (apply(nn.BatchNorm2d(4)), apply(L2BatchNorm2d(4))):
            with pytest.warns(l2bn.ConversionWarning, match="not synchronized"):
                assert convert(bn) is bn


def test_the_remedy_for_weight_normalized_layers_works():
    bn = _weight_norm_parametrized(nn.BatchNorm2d(4))
    torch.nn.utils.parametrize.remove_parametrizations(bn, "weight")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer = _weight_norm_parametrized(l2bn.convert_bn_to_l2bn(bn))
    assert isinstance(layer, L2BatchNorm2d)
    layer(torch.randn(2, 4, 3, 3)).sum().backward()
    assert layer.parametrizations.weight.original0.grad is not None


def test_lazy_layer_keeps_hooks_and_its_own_initialization():
    calls = []
    bn = nn.LazyBatchNorm2d()
    bn.register_forward_pre_hook(lambda m, args: calls.append(("pre", m)))
    bn.register_forward_hook(lambda m, args, out: calls.append(("post", m)))
    layer = l2bn.convert_bn_to_l2bn(bn)
    layer(torch.randn(2, 5, 3, 3))
    assert type(layer) is L2BatchNorm2d and layer.num_features == 5
    assert calls == [("pre", layer), ("post", layer)]
