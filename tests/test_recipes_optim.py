"""Issue 13: weight decay and SWA's statistics update reach L2BN whatever its base class."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import AveragedModel

import l2bn
from _timm import import_timm
from l2bn.norms import create_norm, list_norms


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),
        l2bn.L2BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 1),
        l2bn.convert_bn_to_l2bn(nn.LazyBatchNorm2d()),
        nn.GroupNorm(2, 4),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )


def test_param_groups_put_l2bn_and_biases_without_decay():
    model = _model()
    model(torch.randn(2, 3, 8, 8))  # initializes the lazy layer
    model[0].weight.requires_grad_(True)
    groups = l2bn.param_groups(model, 5e-4)
    decay, no_decay = ({id(p) for p in g["params"]} for g in groups)
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    assert decay == {id(model[0].weight), id(model[3].weight), id(model[7].weight)}
    norm_params = [model[i].weight for i in (1, 4, 5)] + [model[i].bias for i in (1, 4, 5)]
    assert {id(p) for p in norm_params} | {id(model[3].bias), id(model[7].bias)} == no_decay
    # The base-class check that torchvision's split_normalization_params uses misses L2BN.
    assert not isinstance(model[1], _BatchNorm) and isinstance(model[1], l2bn.L2BN_TYPES)
    opt = torch.optim.SGD(groups, lr=0.1)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_param_groups_options():
    model = _model()
    model(torch.randn(2, 3, 8, 8))
    model[7].weight.requires_grad_(False)
    groups = l2bn.param_groups(model, 0.1, bias_decay=True, no_decay_names={"0.weight"})
    decay = {id(p) for p in groups[0]["params"]}
    assert id(model[3].bias) in decay and id(model[0].weight) not in decay
    assert id(model[7].weight) not in decay | {id(p) for p in groups[1]["params"]}


def test_param_groups_keep_a_parametrized_norm_weight_without_decay():
    # torch.nn.utils.parametrize moves a weight to <layer>.parametrizations.weight.original,
    # a parameter of a child module: it must stay in the norm layer's group.
    from torch.nn.utils import parametrize

    class Softplus(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return nn.functional.softplus(w)

    model = nn.Sequential(nn.Conv2d(3, 4, 3), l2bn.L2BatchNorm2d(4), nn.Linear(4, 2))
    parametrize.register_parametrization(model[1], "weight", Softplus())
    parametrize.register_parametrization(model[2], "bias", Softplus())
    groups = l2bn.param_groups(model, 5e-4)
    decay, no_decay = ({id(p) for p in g["params"]} for g in groups)
    norm_weight = model[1].parametrizations.weight.original
    linear_bias = model[2].parametrizations.bias.original
    assert id(norm_weight) in no_decay and id(linear_bias) in no_decay
    assert decay == {id(model[0].weight), id(model[2].weight)}
    named = l2bn.param_groups(model, 5e-4, no_decay_names={"2.weight"}, bias_decay=True)
    conv = model[0]
    assert {id(p) for p in named[0]["params"]} == {id(conv.weight), id(conv.bias), id(linear_bias)}


def test_timm_weight_decay_groups_reach_l2bn():
    import_timm()
    from timm.optim import param_groups_weight_decay

    model = _model()
    model(torch.randn(2, 3, 8, 8))
    groups = param_groups_weight_decay(model, 1e-4)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert {id(model[1].weight), id(model[1].bias), id(model[4].weight)} <= no_decay


def test_update_bn_recomputes_l2bn_statistics():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), l2bn.L2BatchNorm2d(4), nn.BatchNorm2d(4))
    model.train()(torch.randn(4, 3, 6, 6) * 5)  # statistics of the "old weights"
    by_torch = copy.deepcopy(model)
    batches = [torch.randn(4, 3, 6, 6) * s for s in (0.5, 1.0, 2.0)]
    l2bn.update_bn(batches, model)
    # The cumulative average over the loader, as a fresh layer with momentum=None gives it.
    reference = l2bn.L2BatchNorm2d(4, momentum=None)
    with torch.no_grad():
        for b in batches:
            reference(model[0](b))
    torch.testing.assert_close(model[1].running_mean, reference.running_mean)
    torch.testing.assert_close(model[1].running_var, reference.running_var)
    assert model[1].momentum == 0.1 and model[1].num_batches_tracked == 3
    # torch's update_bn resets and recomputes the BatchNorm only: the L2BN layer (not a
    # _BatchNorm) keeps its old statistics, moved by a few momentum-0.1 steps.
    torch.optim.swa_utils.update_bn(batches, by_torch)
    torch.testing.assert_close(by_torch[2].running_mean, model[2].running_mean)
    assert (by_torch[1].running_mean - reference.running_mean).abs().max() > 1e-3
    frozen = l2bn.freeze(nn.Sequential(l2bn.L2BatchNorm2d(3)))
    l2bn.update_bn([torch.randn(2, 3, 2, 2)], frozen)  # frozen layers are left alone
    assert torch.equal(frozen[0].running_var, torch.ones(3))


def _has_running_stats(norm: str) -> bool:
    return getattr(create_norm(norm, 4), "running_mean", None) is not None


_RUNNING_NORMS = [n for n in list_norms() if _has_running_stats(n)]
"""Every registry norm with running statistics: BN, L2BN, LNBN/INBN/PNBN, SN, BCN, BIN."""


def test_running_norms_include_the_mixed_norms():
    assert {"bn", "l2bn", "lnbn", "sn", "bcn", "bin"} <= set(_RUNNING_NORMS)


def _swa_averaged(norm: str) -> AveragedModel:
    """A conv and the norm ``norm`` whose running statistics are those of other weights:
    trained once on a shifted batch, then SWA-averaged with a rescaled convolution."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), create_norm(norm, 4), nn.BatchNorm2d(4))
    model.train()(torch.randn(8, 3, 6, 6) * 5 + 3)
    averaged = AveragedModel(model)
    with torch.no_grad():
        model[0].weight.mul_(0.3)
    averaged.update_parameters(model)
    return averaged


@pytest.mark.parametrize("norm", _RUNNING_NORMS)
def test_update_bn_recomputes_every_norm_with_running_statistics(norm: str):
    averaged = _swa_averaged(norm)
    batches = [torch.randn(4, 3, 6, 6) * s for s in (0.5, 1.0, 2.0)]
    l2bn.update_bn(batches, averaged)
    layer = averaged.module[1]
    # A reference pass: a fresh layer with a cumulative average (momentum=None).
    reference = create_norm(norm, 4, momentum=None)
    with torch.no_grad():
        features = [averaged.module[0](b) for b in batches]
        for f in features:
            reference(f)
    torch.testing.assert_close(layer.running_mean, reference.running_mean)
    torch.testing.assert_close(layer.running_var, reference.running_var)
    assert layer.momentum == 0.1 and layer.num_batches_tracked == len(batches)
    if norm in ("sn", "bcn", "bin"):  # their BN statistics are the input's, by hand
        mean = torch.stack([f.mean((0, 2, 3)) for f in features]).mean(0)
        var = torch.stack([f.var((0, 2, 3)) for f in features]).mean(0)
        torch.testing.assert_close(layer.running_mean, mean)
        torch.testing.assert_close(layer.running_var, var)


def test_update_bn_recomputes_a_model_without_batchnorm_or_l2bn():
    # A model whose only norm with running statistics is a mixed norm (no BN, no L2BN).
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), create_norm("sn", 4))
    model.train()(torch.randn(8, 3, 6, 6) * 5 + 3)
    batches = [torch.randn(4, 3, 6, 6)]
    l2bn.update_bn(batches, model)
    with torch.no_grad():
        features = model[0](batches[0])
    torch.testing.assert_close(model[1].running_mean, features.mean((0, 2, 3)))
    torch.testing.assert_close(model[1].running_var, features.var((0, 2, 3)))
    assert model[1].num_batches_tracked == 1


def test_update_bn_skips_mixed_norms_without_running_statistics():
    model = nn.Sequential(create_norm("sn", 3, track_running_stats=False), nn.BatchNorm2d(3))
    l2bn.update_bn([torch.randn(2, 3, 4, 4)], model)
    assert model[0].running_mean is None and model[1].num_batches_tracked == 1
