"""l2bn.norms: the registry and the defining property of every normalization."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from l2bn import L2BatchNorm2d
from l2bn.norms import (
    BatchChannelNorm2d,
    BatchInstanceNorm2d,
    InstanceNormBatchNorm2d,
    LayerNormBatchNorm2d,
    PositionNormBatchNorm2d,
    SwitchableNorm2d,
    bcn_num_groups,
    clip_gates_,
    create_norm,
    get_norm_layer,
    install_gate_clipping,
    list_norms,
)
from l2bn.norms.groups import nearest_divisor

PAPER_NAMES = ["bn", "l2bn", "lnbn", "inbn", "pnbn", "ln", "in", "gn", "sn", "bcn", "bin"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _input(seed: int = 0, shape=(4, 16, 5, 5)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 3 + 1


# --- registry -----------------------------------------------------------------------


def test_list_norms_has_every_paper_name_and_the_gn_aliases():
    names = list_norms()
    assert set(PAPER_NAMES) <= set(names)
    assert {"gn-cpg4", "gn-cpg8"} <= set(names)


@pytest.mark.parametrize("name", list_norms())
def test_every_norm_runs_forward_backward_train_and_eval(name):
    layer = create_norm(name, 16)
    x = _input().requires_grad_()
    y = layer(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for p in layer.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    layer.eval()
    with torch.no_grad():
        assert torch.isfinite(layer(x)).all()


def test_registry_builds_the_expected_types():
    expected = {
        "bn": nn.BatchNorm2d,
        "l2bn": L2BatchNorm2d,
        "lnbn": LayerNormBatchNorm2d,
        "inbn": InstanceNormBatchNorm2d,
        "pnbn": PositionNormBatchNorm2d,
        "ln": nn.GroupNorm,
        "in": nn.GroupNorm,
        "gn": nn.GroupNorm,
        "sn": SwitchableNorm2d,
        "bcn": BatchChannelNorm2d,
        "bin": BatchInstanceNorm2d,
    }
    for name, cls in expected.items():
        assert type(create_norm(name, 8)) is cls, name
    assert create_norm("ln", 8).num_groups == 1
    assert create_norm("in", 8).num_groups == 8


def test_unknown_norm_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown norm 'batchnorm'") as info:
        create_norm("batchnorm", 8)
    for name in list_norms():
        assert name in str(info.value)
    with pytest.raises(ValueError, match="valid names"):
        get_norm_layer("l3bn")


def test_non_string_non_callable_norm_is_a_type_error():
    with pytest.raises(TypeError, match="name"):
        get_norm_layer(3)


def test_callable_is_returned_as_is_and_names_are_case_insensitive():
    def factory(c: int) -> nn.Module:
        return nn.BatchNorm2d(c)

    assert get_norm_layer(factory) is factory
    assert type(get_norm_layer("L2BN")(4)) is L2BatchNorm2d


def test_kwargs_reach_the_layer():
    assert create_norm("bn", 8, momentum=0.3).momentum == 0.3
    assert get_norm_layer("l2bn", scale=False)(8).scale is False
    assert get_norm_layer("gn", channels_per_group=8)(64).num_groups == 8


# --- GN, LN, IN (Table 5) ---------------------------------------------------------------


def test_gn_channels_per_group_and_aliases():
    assert create_norm("gn-cpg4", 16).num_groups == 4
    assert create_norm("gn-cpg8", 64).num_groups == 8
    assert create_norm("gn", 64, channels_per_group=4).num_groups == 16
    assert create_norm("gn", 64).num_groups == 32  # Wu & He's default
    assert create_norm("gn", 64, num_groups=2).num_groups == 2
    with pytest.raises(ValueError, match="not both"):
        create_norm("gn", 64, channels_per_group=4, num_groups=2)


def test_gn_falls_back_to_the_nearest_divisor():
    # DenseNet widths such as 28 are not multiples of 8: 4 groups of 7 is the closest.
    assert create_norm("gn-cpg8", 28).num_groups == 4
    assert nearest_divisor(150, 37.5) in (30, 50)
    assert 150 % nearest_divisor(150, 37.5) == 0


@pytest.mark.parametrize(
    ("channels", "cpg", "groups"),
    [(124, 8, 31), (148, 8, 37), (244, 8, 61), (388, 8, 97), (60, 8, 6), (150, 4, 30)],
)
def test_gn_cpg_fallback_keeps_the_group_size_near_channels_per_group(channels, cpg, groups):
    # DenseNet-BC widths: the group count nearest to C / 8 (15.5 for 124 channels) among
    # 124's divisors was 4, i.e. 4 groups of 31 channels for "gn-cpg8"; 31 groups of 4
    # channels is the group size nearest to 8 (by ratio: 2x against 3.9x).
    layer = create_norm(f"gn-cpg{cpg}", channels)
    assert layer.num_groups == groups
    size = channels // layer.num_groups
    assert max(size / cpg, cpg / size) <= 2


def test_ln_normalizes_each_whole_sample():
    x = _input()
    expected = F.layer_norm(x, x.shape[1:], eps=1e-5)
    torch.testing.assert_close(create_norm("ln", 16)(x), expected, atol=1e-5, rtol=1e-5)


def test_in_normalizes_each_sample_channel():
    x = _input()
    torch.testing.assert_close(create_norm("in", 16)(x), F.instance_norm(x), atol=1e-5, rtol=1e-5)


# --- LNBN / INBN / PNBN (Table 3) -------------------------------------------------------


def _position_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), eps=1e-5).permute(0, 3, 1, 2)


@pytest.mark.parametrize(
    ("name", "prenorm"),
    [
        ("lnbn", lambda x: F.layer_norm(x, x.shape[1:], eps=1e-5)),
        ("inbn", lambda x: F.instance_norm(x, eps=1e-5)),
        ("pnbn", _position_norm),
    ],
)
def test_prenorm_bn_equals_its_composite(name, prenorm):
    torch.manual_seed(0)
    layer = create_norm(name, 16)
    reference = nn.BatchNorm2d(16)
    with torch.no_grad():
        for p in (layer.weight, layer.bias):
            p.uniform_(0.5, 1.5)
        reference.load_state_dict(layer.state_dict(), strict=False)
    for seed in range(3):
        x = _input(seed)
        torch.testing.assert_close(layer(x), reference(prenorm(x)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.running_var, reference.running_var)
    layer.eval(), reference.eval()
    x = _input(7)
    torch.testing.assert_close(layer(x), reference(prenorm(x)), atol=1e-5, rtol=1e-5)
    # and it is not plain BN
    assert not torch.allclose(layer(x), reference(x), atol=1e-3)


def test_prenorm_state_dict_is_batchnorms():
    assert create_norm("lnbn", 8).state_dict().keys() == nn.BatchNorm2d(8).state_dict().keys()


# --- SN (Luo et al. 2018) ---------------------------------------------------------------


def test_sn_importance_weights_are_softmax_normalized():
    layer = SwitchableNorm2d(16)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.3, -1.2, 2.0]))
        layer.var_weight.copy_(torch.tensor([-0.5, 0.1, 1.0]))
    w_mean, w_var = layer.importance_weights()
    for w, logits in ((w_mean, layer.mean_weight), (w_var, layer.var_weight)):
        assert (w > 0).all()
        torch.testing.assert_close(w.sum(), torch.tensor(1.0))
        torch.testing.assert_close(w, torch.exp(logits) / torch.exp(logits).sum())


def test_sn_output_mixes_in_ln_bn_statistics():
    layer = SwitchableNorm2d(16)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.3, -1.2, 2.0]))
        layer.var_weight.copy_(torch.tensor([-0.5, 0.1, 1.0]))
    x = _input().double()
    layer.double()
    w_mean, w_var = (w.detach() for w in layer.importance_weights())
    means = [x.mean((2, 3), True), x.mean((1, 2, 3), True), x.mean((0, 2, 3), True)]
    variances = [
        x.var((2, 3), unbiased=False, keepdim=True),
        x.var((1, 2, 3), unbiased=False, keepdim=True),
        x.var((0, 2, 3), unbiased=False, keepdim=True),
    ]
    mean = sum(w * m for w, m in zip(w_mean, means, strict=True))
    var = sum(w * v for w, v in zip(w_var, variances, strict=True))
    expected = (x - mean) / torch.sqrt(var + layer.eps)
    torch.testing.assert_close(layer(x), expected)


def test_sn_reduces_to_bn_when_bn_weight_dominates():
    torch.manual_seed(0)
    layer = SwitchableNorm2d(16)
    bn = nn.BatchNorm2d(16)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([-40.0, -40.0, 40.0]))
        layer.var_weight.copy_(torch.tensor([-40.0, -40.0, 40.0]))
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
        bn.weight.copy_(layer.weight)
        bn.bias.copy_(layer.bias)
    for seed in range(3):
        x = _input(seed)
        torch.testing.assert_close(layer(x), bn(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.running_var, bn.running_var)
    layer.eval(), bn.eval()
    x = _input(9)
    torch.testing.assert_close(layer(x), bn(x), atol=1e-5, rtol=1e-5)


def test_sn_statistics_keep_float32_accuracy_for_offset_channels():
    # Channels whose mean is 100 times their spread: E[x^2] - E[x]^2 would lose about four
    # of float32's seven digits in the LN and BN variances (output error ~2e-3).
    torch.manual_seed(0)
    layer = SwitchableNorm2d(16)
    reference = copy.deepcopy(layer).double()
    x = torch.randn(8, 16, 8, 8) + 100
    torch.testing.assert_close(layer(x).double(), reference(x.double()), atol=5e-5, rtol=0)
    torch.testing.assert_close(
        layer.running_var.double(), reference.running_var, atol=1e-6, rtol=1e-5
    )


def test_sn_learns_its_importance_weights():
    layer = SwitchableNorm2d(16)
    (layer(_input()) * _input(1)).sum().backward()
    assert layer.mean_weight.grad.abs().sum() > 0
    assert layer.var_weight.grad.abs().sum() > 0


# --- BCN (Qiao et al. 2019) --------------------------------------------------------------


def test_bcn_group_count_is_min_32_and_c_over_4():
    assert [bcn_num_groups(c) for c in (16, 32, 64, 128, 256, 512)] == [4, 8, 16, 32, 32, 32]
    assert bcn_num_groups(4) == 1
    assert create_norm("bcn", 64).num_groups == 16
    assert 150 % bcn_num_groups(150) == 0  # DenseNet-BC width: nearest divisor


def test_bcn_is_bn_then_gn():
    torch.manual_seed(0)
    layer = BatchChannelNorm2d(16)
    bn, gn = nn.BatchNorm2d(16), nn.GroupNorm(4, 16)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(0.5, 1.5)
        bn.weight.copy_(layer.bn_weight), bn.bias.copy_(layer.bn_bias)
        gn.weight.copy_(layer.weight), gn.bias.copy_(layer.bias)
    for seed in range(2):
        x = _input(seed)
        torch.testing.assert_close(layer(x), gn(bn(x)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.running_var, bn.running_var)
    layer.eval(), bn.eval()
    x = _input(5)
    torch.testing.assert_close(layer(x), gn(bn(x)), atol=1e-5, rtol=1e-5)


# --- BIN (Nam & Kim 2018) ----------------------------------------------------------------


def _bin_and_bn():
    torch.manual_seed(0)
    layer = BatchInstanceNorm2d(16)
    bn = nn.BatchNorm2d(16)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5), layer.bias.uniform_(-1, 1)
        bn.weight.copy_(layer.weight), bn.bias.copy_(layer.bias)
    return layer, bn


def test_bin_equals_bn_at_rho_one():
    layer, bn = _bin_and_bn()
    assert torch.equal(layer.gate, torch.ones(16))  # initialized as BN
    for seed in range(2):
        x = _input(seed)
        torch.testing.assert_close(layer(x), bn(x), atol=1e-5, rtol=1e-5)
    layer.eval(), bn.eval()
    torch.testing.assert_close(layer(_input(3)), bn(_input(3)), atol=1e-5, rtol=1e-5)


def test_bin_equals_in_at_rho_zero():
    layer, _ = _bin_and_bn()
    with torch.no_grad():
        layer.gate.zero_()
    x = _input()
    expected = F.instance_norm(x, weight=layer.weight, bias=layer.bias)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_bin_gate_is_clipped_to_unit_interval_after_an_update():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), BatchInstanceNorm2d(8))
    gate = model[1].gate
    optimizer = torch.optim.SGD(model.parameters(), lr=10.0)
    remove = install_gate_clipping(optimizer, model)
    gate.grad = torch.tensor([-1.0, 1.0] * 4)  # pushes gates to 11 and -9
    optimizer.step()
    assert torch.equal(gate.detach(), torch.tensor([1.0, 0.0] * 4))
    remove()
    gate.grad = torch.tensor([-1.0, 1.0] * 4)
    optimizer.step()  # without the hook the gate leaves [0, 1] ...
    assert gate.max() > 1 and gate.min() < 0
    assert clip_gates_(model) == 1  # ... and the explicit projection brings it back
    assert gate.min() >= 0 and gate.max() <= 1


def test_bin_forward_never_mixes_outside_unit_interval():
    layer, bn = _bin_and_bn()
    with torch.no_grad():
        layer.gate.fill_(3.0)
    torch.testing.assert_close(layer(_input()), bn(_input()), atol=1e-5, rtol=1e-5)


def test_training_keeps_bin_gates_in_unit_interval(tmp_path):
    # Nam & Kim clip rho to [0, 1] after every update. Without the clip a gate pushed past 1
    # (or below 0) gets no gradient through the forward's clamp: it stays stuck there.
    from l2bn.experiments.checkpoint import load_checkpoint_file
    from l2bn.experiments.train import train_run
    from test_experiments_datasets import tiny_config, write_idx

    root = write_idx(tmp_path / "data", n_train=64, n_test=16)
    config = tiny_config(data_root=str(root), epochs=1, norm="bin", lr=0.5)
    train_run(config, 3, tmp_path / "run", quiet=True)
    state = load_checkpoint_file(tmp_path / "run" / "checkpoint.pt")["model"]
    gates = torch.cat([v.flatten() for k, v in state.items() if k.endswith(".gate")])
    assert gates.numel() > 0
    assert gates.min() >= 0 and gates.max() <= 1
    assert (gates < 1).any()  # the gates did train


def test_mixed_norms_hold_no_plain_batchnorm_child():
    for name in ("sn", "bcn", "bin"):
        layer = create_norm(name, 8)
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in layer.modules())


def test_mixed_norms_reject_bad_input():
    for name in ("sn", "bcn", "bin"):
        with pytest.raises(ValueError, match="channels"):
            create_norm(name, 8)(torch.randn(2, 4, 3, 3))
        with pytest.raises(ValueError, match="4D"):
            create_norm(name, 8)(torch.randn(2, 8))


@pytest.mark.parametrize("name", list_norms())
def test_output_can_feed_an_inplace_relu(name):
    # torchvision-style blocks use nn.ReLU(inplace=True) right after the norm.
    x = _input().requires_grad_()
    y = nn.ReLU(inplace=True)(create_norm(name, 16)(x))
    y.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("name", list_norms())
def test_norms_accept_dtype_like_torch_layers(name):
    layer = create_norm(name, 8, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    assert layer(x).dtype == torch.float64


@pytest.mark.parametrize("name", ["sn", "bcn", "bin"])
def test_mixed_norm_running_stats_follow_batchnorm_rules(name):
    # momentum=None: cumulative average, exactly as nn.BatchNorm2d keeps it.
    layer = create_norm(name, 16, momentum=None)
    bn = nn.BatchNorm2d(16, momentum=None)
    for seed in range(3):
        layer(_input(seed)), bn(_input(seed))
    assert int(layer.num_batches_tracked) == 3
    torch.testing.assert_close(layer.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.running_var, bn.running_var)
    frozen = layer.running_mean.clone()
    layer.eval()
    layer(_input(5))
    assert torch.equal(layer.running_mean, frozen)
