"""Issue 13: frozen L2BN for fine-tuning (torchvision's FrozenBatchNorm2d, timm's freeze)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import l2bn
from _timm import import_timm
from l2bn import FrozenL2BatchNorm1d, FrozenL2BatchNorm2d, L2BatchNorm1d, L2BatchNorm2d


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), L2BatchNorm2d(4, l2_eps=1e-4), nn.ReLU())
    with torch.no_grad():
        model(torch.randn(8, 3, 6, 6))
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    return model


def _input() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(4, 3, 6, 6) * torch.logspace(-1, 1, 4).view(-1, 1, 1, 1)


def test_frozen_layer_is_eval_mode_l2bn_in_train_mode_too():
    model = _model()
    x = _input()
    expected = model.eval()(x)
    state = {k: v.clone() for k, v in model[1].state_dict().items()}
    frozen = l2bn.freeze(model).train()
    assert type(frozen[1]) is FrozenL2BatchNorm2d and frozen[1].l2_eps == 1e-4
    assert not list(frozen[1].parameters())
    y = frozen(x)
    torch.testing.assert_close(y, expected)
    y.sum().backward()  # gradients reach the input side, the statistics do not move
    assert frozen[0].weight.grad is not None
    for key, value in frozen[1].state_dict().items():
        assert torch.equal(value, state[key]), key
    # Not BatchNorm in disguise: BN with the same state gives another output.
    bn = nn.BatchNorm2d(4).eval()
    bn.load_state_dict(frozen[1].state_dict())
    assert (bn(frozen[0](x)).relu() - expected).abs().max() > 0.1


def test_timm_freeze_keeps_l2bn_statistics_moving_ours_does_not():
    timm = import_timm()
    x = _input()
    model = _model()
    timm.utils.freeze(model)
    before = model[1].running_mean.clone()
    model.train()(x)
    assert not torch.equal(model[1].running_mean, before)  # timm's freeze: still moving
    model = l2bn.freeze(_model()).train()
    before = model[1].running_mean.clone()
    model(x)
    assert torch.equal(model[1].running_mean, before)
    # timm's freeze_batch_norm_2d and ours compose: BN and L2BN both frozen.
    mixed = nn.Sequential(nn.BatchNorm2d(3), L2BatchNorm2d(3))
    mixed = l2bn.freeze(timm.layers.freeze_batch_norm_2d(mixed))
    assert type(mixed[1]) is FrozenL2BatchNorm2d and type(mixed[0]).__name__ == "FrozenBatchNorm2d"


@pytest.mark.parametrize("affine", [True, False])
def test_state_dict_compatible_both_ways(affine):
    layer = L2BatchNorm1d(5, affine=affine)
    with torch.no_grad():
        layer.running_mean.uniform_()
        layer.running_var.uniform_(1, 2)
        layer.num_batches_tracked.fill_(3)
        if affine:
            layer.weight.uniform_()
    frozen = FrozenL2BatchNorm1d(5, affine=affine)
    frozen.load_state_dict(layer.state_dict(), strict=True)
    assert list(frozen.state_dict()) == list(layer.state_dict())
    bn = nn.BatchNorm1d(5, affine=affine)
    bn.load_state_dict(frozen.state_dict(), strict=True)
    assert torch.equal(bn.running_var, layer.running_var) and bn.num_batches_tracked == 3
    back = L2BatchNorm1d(5, affine=affine)
    back.load_state_dict(frozen.state_dict(), strict=True)
    x = torch.randn(4, 5) * torch.logspace(-1, 1, 4).view(-1, 1)
    torch.testing.assert_close(frozen(x), back.eval()(x))  # float32 rounding


def test_loads_torchvision_style_frozen_checkpoint_without_num_batches_tracked():
    state = {
        "weight": torch.rand(3),
        "bias": torch.rand(3),
        "running_mean": torch.rand(3),
        "running_var": torch.rand(3) + 1,
    }
    frozen = FrozenL2BatchNorm2d(3)
    frozen.load_state_dict(state, strict=True)
    assert torch.equal(frozen.running_mean, state["running_mean"])


def test_freeze_predicate_unfreeze_round_trip_and_refusals():
    model = nn.Sequential(_model(), nn.Flatten(), L2BatchNorm1d(64))
    frozen = l2bn.freeze(model, lambda name, m: name.startswith("0."))
    assert type(frozen[0][1]) is FrozenL2BatchNorm2d and type(frozen[2]) is L2BatchNorm1d
    weight = frozen[0][1].weight.clone()
    back = l2bn.unfreeze(frozen)
    assert type(back[0][1]) is L2BatchNorm2d and back[0][1].l2_eps == 1e-4
    assert isinstance(back[0][1].weight, nn.Parameter) and torch.equal(back[0][1].weight, weight)
    # SyncL2BatchNorm keeps its process group through the round trip.
    group = object()
    sync = l2bn.freeze(l2bn.SyncL2BatchNorm(3, process_group=group))
    assert type(sync) is l2bn.FrozenL2BatchNorm
    assert l2bn.unfreeze(sync).process_group is group
    with pytest.raises(ValueError, match="no running statistics"):
        l2bn.freeze(L2BatchNorm2d(3, track_running_stats=False))
    with pytest.warns(UserWarning, match=r"BatchNorm layers keep training: 0 \(BatchNorm2d\)"):
        l2bn.freeze(nn.Sequential(nn.BatchNorm2d(3), L2BatchNorm2d(3)))
    with pytest.warns(UserWarning, match=r"L2BN classes, which keep training: 0 \(LazyL2"):
        l2bn.freeze(nn.Sequential(l2bn.LazyL2BatchNorm2d()))


def test_frozen_timm_layout_keeps_activation():
    layer = l2bn.L2BatchNormAct2d(4, act_layer=nn.ReLU)
    frozen = l2bn.freeze(nn.Sequential(layer))[0]
    assert type(frozen) is l2bn.FrozenL2BatchNormAct2d and frozen.act is layer.act
    x = torch.randn(3, 4, 2, 2)
    torch.testing.assert_close(frozen.train()(x), layer.eval()(x))
    assert type(l2bn.unfreeze(frozen)) is l2bn.L2BatchNormAct2d


def test_frozen_norm_act_takes_timm_frozen_norm_act_positional_arguments():
    # timm's FrozenBatchNormAct2d(num_features, eps, apply_act, act_layer, act_kwargs,
    # inplace, drop_layer, device, dtype): a one-line swap keeps its meaning.
    timm = import_timm()
    args = (4, 1e-3, True, "silu", None, False, nn.Dropout, "cpu", torch.float64)
    ours, theirs = l2bn.FrozenL2BatchNormAct2d(*args), timm.layers.FrozenBatchNormAct2d(*args)
    assert ours.eps == theirs.eps == 1e-3 and ours.affine and ours.weight.dtype == torch.float64
    assert repr(ours.act) == repr(theirs.act) and type(ours.drop) is nn.Dropout
    no_act = l2bn.FrozenL2BatchNormAct2d(4, 1e-5, False)
    assert no_act.affine and type(no_act.act) is nn.Identity
    assert type(timm.layers.FrozenBatchNormAct2d(4, 1e-5, False).act) is nn.Identity


@pytest.mark.parametrize("name", ["lnbn", "inbn", "pnbn"])
def test_freeze_does_not_advise_plain_frozen_batchnorm_for_prenormalized_batchnorm(name):
    """l2bn.freeze leaves LNBN / INBN / PNBN training, and its warning must not send them to
    timm's or torchvision's frozen BatchNorm (that would drop the pre-normalization)."""
    from l2bn.norms import create_norm

    model = nn.Sequential(nn.Conv2d(3, 4, 3), create_norm(name, 4))
    cls = type(model[1])
    with pytest.warns(
        UserWarning, match=rf"normalize each sample first.*1 \({cls.__name__}\)"
    ) as w:
        frozen = l2bn.freeze(model)
    assert type(frozen[1]) is cls
    assert not any("Freeze them with timm" in str(m.message) for m in w)
    assert all("Do not freeze" in str(m.message) for m in w if cls.__name__ in str(m.message))


def test_unfreeze_gives_a_synchronized_norm_act_layer_back_its_synchronization():
    """freeze then unfreeze of a SyncL2BatchNormAct (what l2bn.convert_sync_batchnorm makes
    of a timm model's norm-act layers) gives back a SyncL2BatchNormAct, as for
    SyncL2BatchNorm: not an L2BatchNormAct2d, which would silently normalize over each
    process's own batch under DDP."""
    group = object()
    model = nn.Sequential(
        l2bn.SyncL2BatchNormAct(4, act_layer=nn.ReLU, process_group=group),
        l2bn.L2BatchNormAct2d(4, act_layer=nn.ReLU),
    )
    frozen = l2bn.freeze(model)
    assert [type(m) for m in frozen] == [l2bn.FrozenL2BatchNormAct2d] * 2
    back = l2bn.unfreeze(frozen)
    assert type(back[0]) is l2bn.SyncL2BatchNormAct and back[0].process_group is group
    assert isinstance(back[0].act, nn.ReLU)
    assert type(back[1]) is l2bn.L2BatchNormAct2d


def test_freeze_and_unfreeze_keep_the_hooks_of_the_layers_they_replace():
    """As every l2bn converter: a hook registered on an L2BN layer (feature capture,
    activation logging) still fires after freeze and unfreeze, and its handle removes it."""
    calls: list[str] = []
    model = _model()
    handle = model[1].register_forward_hook(lambda *args: calls.append("forward"))
    model[1].register_forward_pre_hook(lambda *args: calls.append("pre"))
    frozen = l2bn.freeze(model)
    frozen(_input())
    assert calls == ["pre", "forward"]
    back = l2bn.unfreeze(frozen)
    calls.clear()
    back(_input())
    assert calls == ["pre", "forward"]
    handle.remove()
    calls.clear()
    back(_input())
    assert calls == ["pre"]
