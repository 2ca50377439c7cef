"""Issue 13: the DDP recipe (`convert_sync_batchnorm` of torch and timm) keeps L2BN an L2BN."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import l2bn
from _timm import import_timm
from l2bn import L2BatchNorm2d, L2BatchNormAct2d, SyncL2BatchNorm, SyncL2BatchNormAct


def _trained(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A few training forwards (non-trivial running statistics), then eval mode."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    return model.eval()


def _conv_l2bn() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1))
    return l2bn.convert_bn_to_l2bn(model)


def _input() -> torch.Tensor:
    torch.manual_seed(1)
    # Per-sample scales from 0.1 to 10: L2BN and BN outputs differ a lot on such a batch.
    return torch.randn(4, 3, 8, 8) * torch.logspace(-1, 1, 4).view(-1, 1, 1, 1)


def test_torch_convert_sync_batchnorm_leaves_l2bn_alone():
    x = _input()
    model = _trained(_conv_l2bn(), x)
    before = model(x)
    layer = model[1]
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted[1] is layer and type(converted[1]) is L2BatchNorm2d
    torch.testing.assert_close(converted(x), before)
    # What torch's converter does to a BatchNorm with the same state: the output moves.
    bn = nn.BatchNorm2d(4).eval()
    bn.load_state_dict(layer.state_dict())
    as_bn = nn.Sequential(model[0], bn, model[2], model[3])
    assert (as_bn(x) - before).abs().max() > 1.0


def test_timm_convert_sync_batchnorm_leaves_l2bn_alone():
    timm = import_timm()
    x = _input()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), timm.layers.BatchNormAct2d(4, act_layer=nn.ReLU))
    model = _trained(l2bn.convert_bn_to_l2bn(model), x)
    before = model(x)
    converted = timm.layers.convert_sync_batchnorm(model)
    assert type(converted[1]) is L2BatchNormAct2d
    torch.testing.assert_close(converted(x), before)
    plain = timm.layers.convert_sync_batchnorm(_conv_l2bn())
    assert type(plain[1]) is L2BatchNorm2d


def test_l2bn_convert_sync_batchnorm_keeps_each_kind():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        L2BatchNorm2d(4, l2_eps=1e-3, scale=False),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.BatchNorm1d(4 * 6 * 6),
    )
    weight = model[1].weight
    group = object()
    converted, report = l2bn.convert_sync_batchnorm(model, group, return_report=True)
    assert type(converted[1]) is SyncL2BatchNorm and converted[1].weight is weight
    assert converted[1].process_group is group
    assert converted[1].l2_eps == 1e-3 and converted[1].scale is False
    assert type(converted[2]) is nn.SyncBatchNorm and type(converted[4]) is nn.SyncBatchNorm
    assert converted[2].process_group is group
    assert len(report.converted) == 3
    # Outside a process group the synchronized L2BN computes what L2BN computes.
    x = _input()
    reference = L2BatchNorm2d(4, l2_eps=1e-3, scale=False)
    reference.load_state_dict(converted[1].state_dict())
    y = converted[0](x)
    torch.testing.assert_close(converted[1](y), reference(y))


def test_l2bn_convert_sync_batchnorm_refuses_lazy_and_warns_on_unknown_batchnorm():
    with pytest.raises(ValueError, match="uninitialized LazyBatchNorm2d"):
        l2bn.convert_sync_batchnorm(nn.Sequential(nn.LazyBatchNorm2d()))
    with pytest.raises(ValueError, match="uninitialized LazyL2BatchNorm2d"):
        l2bn.convert_sync_l2batchnorm(nn.Sequential(l2bn.LazyL2BatchNorm2d()))

    class CustomBatchNorm(nn.BatchNorm2d):
        pass

    model = nn.Sequential(CustomBatchNorm(3))
    with pytest.warns(l2bn.ConversionWarning, match=r"0 is a .*CustomBatchNorm"):
        out = l2bn.convert_sync_batchnorm(model)
    assert type(out[0]) is CustomBatchNorm
    with pytest.raises(TypeError, match="CustomBatchNorm"):
        l2bn.convert_sync_l2batchnorm(model, strict=True)


def test_convert_sync_l2batchnorm_handles_norm_act_layers():
    timm = import_timm()
    act = nn.SiLU()
    model = nn.Sequential(timm.layers.BatchNormAct2d(4), L2BatchNormAct2d(4, act_layer=nn.GELU))
    model[0].act = act
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        converted = l2bn.convert_sync_l2batchnorm(model)
    assert [type(m) for m in converted] == [SyncL2BatchNormAct, SyncL2BatchNormAct]
    assert converted[0].act is act and isinstance(converted[1].act, nn.GELU)
    x = _input()[:, :1].expand(4, 4, 8, 8).contiguous()
    converted.eval()
    expected = act(L2BatchNorm2d(4).eval()(x))
    torch.testing.assert_close(converted[0](x), expected)
    # timm's own SyncBatchNormAct (what timm's converter makes) converts too.
    synced = timm.layers.convert_sync_batchnorm(nn.Sequential(timm.layers.BatchNormAct2d(4)))
    assert type(l2bn.convert_bn_to_l2bn(synced)[0]) is SyncL2BatchNormAct


def test_sync_converters_keep_hooks():
    # torch's SyncBatchNorm.convert_sync_batchnorm drops them; l2bn's converters keep them
    x = _input()
    for convert in (l2bn.convert_sync_l2batchnorm, l2bn.convert_sync_batchnorm):
        for layer in (nn.BatchNorm2d(3), L2BatchNorm2d(3)):
            calls = []
            handle = layer.register_forward_hook(lambda m, i, o, calls=calls: calls.append(m))
            model = convert(nn.Sequential(layer)).eval()
            assert type(model[0]) in (SyncL2BatchNorm, nn.SyncBatchNorm)
            model(x)
            assert calls == [model[0]], (convert.__name__, type(layer).__name__)
            handle.remove()
            model(x)
            assert len(calls) == 1


@pytest.mark.parametrize("name", ["lnbn", "inbn", "pnbn"])
def test_sync_converters_do_not_turn_prenormalized_batchnorm_into_plain_batchnorm(name):
    """LNBN / INBN / PNBN have no synchronized counterpart: no converter turns one into a
    plain SyncBatchNorm (which drops the pre-normalization) and none leaves it silently."""
    from l2bn.norms import create_norm

    def model() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), create_norm(name, 4), nn.BatchNorm2d(4))

    cls = type(model()[1])
    x = _input()
    before_prenorm = _trained(model(), x)[:2](x)
    with pytest.warns(l2bn.ConversionWarning, match=rf"\b1 is a {cls.__name__}.*not synchronized"):
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(_trained(model(), x))
    assert type(converted[1]) is cls and type(converted[2]) is nn.SyncBatchNorm
    torch.testing.assert_close(converted[:2](x), before_prenorm)
    with pytest.warns(l2bn.ConversionWarning, match="root module"):
        alone = nn.SyncBatchNorm.convert_sync_batchnorm(model()[1])
    assert type(alone) is cls
    for convert in (l2bn.convert_sync_batchnorm, l2bn.convert_sync_l2batchnorm):
        with pytest.warns(l2bn.ConversionWarning, match=rf"\b1 is a .*{cls.__name__}.*each sample"):
            converted = convert(_trained(model(), x))
        assert type(converted[1]) is cls
        torch.testing.assert_close(converted[:2].eval()(x), before_prenorm)
        with pytest.raises(TypeError, match=cls.__name__):
            convert(model(), strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        l2bn.convert_sync_l2batchnorm(model(), predicate=lambda path, _: path != "1")

    from l2bn.experiments.distributed import convert_sync_norms

    with pytest.warns(l2bn.ConversionWarning, match=rf"layer 0 is a {cls.__name__}"):
        convert_sync_norms(nn.Sequential(model()[1]), torch.device("cpu"))
