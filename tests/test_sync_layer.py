"""SyncL2BatchNorm in one process: delegation to L2BN, module conventions, conversion.

The multi-process behaviour is tested in test_sync_distributed.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

from l2bn import (
    L2BatchNorm1d,
    L2BatchNorm2d,
    L2BatchNorm3d,
    convert_bn_to_l2bn,
    convert_l2bn_to_bn,
    is_l2_batch_norm,
)
from l2bn.sync import SyncL2BatchNorm
from l2bn.sync_convert import convert_sync_l2batchnorm

SHAPES = {
    "NC": (L2BatchNorm1d, nn.BatchNorm1d, (6, 5)),
    "NCL": (L2BatchNorm1d, nn.BatchNorm1d, (4, 3, 7)),
    "NCHW": (L2BatchNorm2d, nn.BatchNorm2d, (4, 3, 5, 6)),
    "NCDHW": (L2BatchNorm3d, nn.BatchNorm3d, (3, 2, 3, 4, 5)),
}


def _samples(shape: tuple[int, ...], seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Per-sample scales 10x apart, so that L2BN and BN give different outputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    scales = torch.empty((shape[0],) + (1,) * (len(shape) - 1), dtype=dtype)
    return x * scales.uniform_(0.3, 3.0, generator=g) + 0.5


def _randomize(layer: _NormBase, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.3 + 1)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.3)
        layer.running_mean.copy_(torch.randn(layer.running_mean.shape, generator=g))
        layer.running_var.copy_(torch.rand(layer.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize("key", list(SHAPES))
def test_delegates_to_l2bn_outside_a_process_group(key: str) -> None:
    """No process group: bitwise the same as L2BatchNorm*d (training and eval), not BN."""
    l2bn_cls, bn_cls, shape = SHAPES[key]
    assert not torch.distributed.is_initialized()
    c = shape[1]
    ref = l2bn_cls(c)
    _randomize(ref)
    sync = SyncL2BatchNorm(c)
    sync.load_state_dict(ref.state_dict())
    for step in range(2):
        x = _samples(shape, seed=step)
        dy = _samples(shape, seed=10 + step)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = sync(xa), ref(xb)
        (ya * dy).sum().backward()
        (yb * dy).sum().backward()
        assert torch.equal(ya, yb)
        assert torch.equal(xa.grad, xb.grad)
    assert torch.equal(sync.weight.grad, ref.weight.grad)
    assert torch.equal(sync.bias.grad, ref.bias.grad)
    for name, buf in ref.named_buffers():
        assert torch.equal(getattr(sync, name), buf), name
    sync.eval()
    ref.eval()
    x = _samples(shape, seed=5)
    assert torch.equal(sync(x), ref(x))

    bn = bn_cls(c).train()
    bn.load_state_dict(ref.state_dict())
    diff = (sync.train()(x) - bn(x)).abs().max()
    assert diff > 1e-2, "the layer must compute L2BN, not BN"


def test_empty_batch_outside_a_process_group() -> None:
    sync = SyncL2BatchNorm(3)
    x = torch.zeros(0, 3, 4, 4, requires_grad=True)
    y = sync(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert torch.equal(sync.running_var, torch.ones(3))


def test_rejects_bad_input() -> None:
    sync = SyncL2BatchNorm(3)
    with pytest.raises(ValueError, match="expected input of shape"):
        sync(torch.randn(3))
    with pytest.raises(ValueError, match="3 channels"):
        sync(torch.randn(4, 5, 2))
    with pytest.raises(TypeError, match="floating-point"):
        sync(torch.ones(4, 3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        sync(torch.randn(1, 3))
    for shape in ((2, 3), (2, 3, 4), (2, 3, 4, 5), (2, 3, 1, 2, 2, 2)):
        sync._check_input_dim(torch.randn(shape))
    with pytest.raises(ValueError, match="expected input of shape"):
        sync._check_input_dim(torch.randn(3))


def test_module_conventions() -> None:
    """Same state_dict as BatchNorm2d, an L2BN layer, process_group stored as given."""
    group = object()
    sync = SyncL2BatchNorm(4, process_group=group, l2_eps=1e-3, scale=False, dtype=torch.float64)
    assert isinstance(sync, _NormBase) and not isinstance(sync, _BatchNorm)
    assert is_l2_batch_norm(sync)
    assert sync.process_group is group
    assert sync.weight.dtype == torch.float64
    assert list(sync.state_dict()) == list(nn.BatchNorm2d(4).state_dict())
    assert "l2_eps=0.001" in repr(sync)
    assert "scale=False" in repr(sync)


def _model() -> nn.Sequential:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Sequential(nn.Conv2d(4, 4, 1), L2BatchNorm2d(4, l2_eps=1e-3, scale=False)),
        nn.SyncBatchNorm(4),
        nn.GroupNorm(2, 4),
        nn.Flatten(),
        nn.BatchNorm1d(4 * 5 * 5, affine=False),
    )
    for m in model.modules():
        if isinstance(m, _NormBase) and m.affine:
            _randomize(m)
    model[1].weight.requires_grad_(False)
    model[3].eval()
    return model


def test_convert_sync_l2batchnorm_keeps_state() -> None:
    model = _model()
    before = {name: m for name, m in model.named_modules() if isinstance(m, _NormBase)}
    params = {name: list(m.parameters()) for name, m in before.items()}
    buffers = {name: list(m.buffers()) for name, m in before.items()}
    group = object()
    converted = convert_sync_l2batchnorm(model, process_group=group)
    assert converted is model
    after = dict(converted.named_modules())
    for name, old in before.items():
        new = after[name]
        assert type(new) is SyncL2BatchNorm, name
        assert new.process_group is group
        assert new.training == old.training
        assert all(a is b for a, b in zip(new.parameters(), params[name], strict=True))
        assert all(a is b for a, b in zip(new.buffers(), buffers[name], strict=True))
        assert (new.eps, new.momentum, new.affine) == (old.eps, old.momentum, old.affine)
        assert new.l2_eps == getattr(old, "l2_eps", new.l2_eps)
        assert new.scale == getattr(old, "scale", True)
    assert not after["1"].weight.requires_grad
    assert after["2.1"].scale is False
    assert after["2.1"].l2_eps == 1e-3
    assert not after["3"].training
    assert type(after["4"]) is nn.GroupNorm


def test_converted_model_computes_l2bn() -> None:
    """Outside a process group the converted model equals the L2BN model, and differs from BN."""
    torch.manual_seed(0)
    bn_model = _model()[:2]
    x = _samples((4, 3, 5, 5), seed=3)
    l2bn_out = convert_bn_to_l2bn(copy.deepcopy(bn_model))(x)
    sync_out = convert_sync_l2batchnorm(copy.deepcopy(bn_model))(x)
    assert torch.equal(sync_out, l2bn_out)
    assert (sync_out - bn_model.train()(x)).abs().max() > 1e-2


def test_conversion_predicate_selects_layers() -> None:
    """predicate(qualified_name, layer): here only the L2BN layers are synchronized."""
    model = _model()
    seen = []

    def only_l2bn(name: str, layer: nn.Module) -> bool:
        seen.append(name)
        return is_l2_batch_norm(layer)

    converted = convert_sync_l2batchnorm(model, predicate=only_l2bn)
    assert seen == ["1", "2.1", "3", "6"]
    assert type(converted[2][1]) is SyncL2BatchNorm
    assert type(converted[1]) is nn.BatchNorm2d
    assert type(converted[3]) is nn.SyncBatchNorm


def test_top_level_conversion_returns_new_layer() -> None:
    bn = nn.BatchNorm3d(2, momentum=None, dtype=torch.float64)
    out = convert_sync_l2batchnorm(bn)
    assert type(out) is SyncL2BatchNorm
    assert out.weight is bn.weight
    assert out.momentum is None
    assert out.running_mean.dtype == torch.float64


def test_generic_converters_know_sync_layers() -> None:
    """convert_bn_to_l2bn / convert_l2bn_to_bn map SyncBatchNorm <-> SyncL2BatchNorm."""
    group = object()
    sbn = nn.SyncBatchNorm(4, process_group=group)
    l2 = convert_bn_to_l2bn(nn.Sequential(sbn))[0]
    assert type(l2) is SyncL2BatchNorm
    assert l2.process_group is group
    assert l2.weight is sbn.weight
    back = convert_l2bn_to_bn(nn.Sequential(l2))[0]
    assert type(back) is nn.SyncBatchNorm
    assert back.process_group is group
    assert back.weight is sbn.weight


def test_weight_without_bias_as_batchnorm():
    layer = SyncL2BatchNorm(3, bias=False)
    assert layer.bias is None and layer.weight is not None
    assert list(layer.state_dict()) == list(torch.nn.SyncBatchNorm(3, bias=False).state_dict())
    converted = convert_sync_l2batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3, bias=False)))
    assert converted[0].bias is None and isinstance(converted[0], SyncL2BatchNorm)


def test_sync_passes_follow_the_dispatcher():
    """The synchronized layer's full-size passes are chosen by ``l2bn._impl.dispatch``:
    on CPU outside Triton's interpreter the Triton backend never applies, so the PyTorch
    passes run (an empty share included); ``test_triton_sync.py`` checks the Triton side."""
    from l2bn import backends
    from l2bn._impl import dispatch, pytorch
    from l2bn._impl import triton as triton_backend
    from l2bn._impl.sync_function import PYTORCH_PASSES, sync_passes

    if triton_backend.interpreting():
        pytest.skip("Triton's interpreter takes CPU tensors")
    x = torch.randn(4, 3, 5)
    for preferred in (None, "triton", "cpu"):
        with backends.prefer(preferred):
            for t in (x, x[:0], x.double(), x.bfloat16()):
                assert dispatch.sync_backend(t, None, None, True) is pytorch
                assert sync_passes(t, None, None) is PYTORCH_PASSES


def test_one_value_over_the_group_is_refused_after_the_gather(monkeypatch) -> None:
    """A one-process gloo group the layer is told holds two ranks (so it synchronizes):
    one value per channel over the group is L2BatchNorm's ValueError, with the running
    statistics and the batch count untouched; test_sync_distributed.py checks two ranks."""
    dist = torch.distributed
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        monkeypatch.setattr(SyncL2BatchNorm, "_group_size", lambda self: 2)
        sync = SyncL2BatchNorm(3)
        before = {k: v.clone() for k, v in sync.state_dict().items()}
        for shape in ((1, 3), (1, 3, 1, 1)):
            with pytest.raises(ValueError, match="more than 1 value per channel"):
                sync(torch.randn(shape))
            for key, value in sync.state_dict().items():
                assert torch.equal(value, before[key]), key
        sync(torch.randn(2, 3))
        assert int(sync.num_batches_tracked) == 1
    finally:
        dist.destroy_process_group()


def test_global_count_is_read_only_by_ranks_with_at_most_one_value() -> None:
    """A rank with two or more values knows the group's total exceeds one: it never reads
    the gathered count back (no host synchronization in the usual step)."""
    from l2bn._impl.sync_stats import check_global_count

    class Unreadable:
        def __int__(self) -> int:
            raise AssertionError("the global count was read back")

    check_global_count(2, Unreadable(), 4)
    for local in (0, 1):
        with pytest.raises(ValueError, match="1 value per channel over the 4 ranks"):
            check_global_count(local, torch.tensor(1.0), 4)
        check_global_count(local, torch.tensor(2.0), 4)
        check_global_count(local, torch.tensor(0.0), 4)


def test_eps_is_checked_when_synchronizing(monkeypatch) -> None:
    """``eps <= 0`` in training is L2BatchNorm's ValueError in a group of several processes
    too (it was only checked on the one-process path: eps=0 trained silently and a
    negative eps gave NaN), raised before any collective, every buffer untouched."""
    dist = torch.distributed
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        monkeypatch.setattr(SyncL2BatchNorm, "_group_size", lambda self: 2)
        x = torch.ones(4, 3) + torch.arange(3.0)  # constant channels: variance 0
        for eps in (0.0, -1e-3):
            sync = SyncL2BatchNorm(3, eps=eps)
            before = {k: v.clone() for k, v in sync.state_dict().items()}
            with pytest.raises(ValueError, match="eps must be positive during training"):
                sync(x)
            for key, value in sync.state_dict().items():
                assert torch.equal(value, before[key]), key
            with pytest.raises(ValueError, match="eps must be positive during training"):
                L2BatchNorm1d(3, eps=eps)(x)  # what one process says
    finally:
        dist.destroy_process_group()


def test_input_on_a_device_the_group_cannot_serve_is_a_clear_error(monkeypatch) -> None:
    """A process group without a backend for the input's device (an NCCL group given CPU
    input, the model not moved to the GPU; here a ``cuda:gloo`` group) is a ValueError that
    names the layer, the input's device and the group's devices, not c10d's bare "No
    backend type associated with device type cpu" from inside the all-gather (torch's
    SyncBatchNorm also refuses such input with a ValueError); the buffers are untouched."""
    dist = torch.distributed
    assert not dist.is_initialized()
    dist.init_process_group("cuda:gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        monkeypatch.setattr(SyncL2BatchNorm, "_group_size", lambda self: 2)
        sync = SyncL2BatchNorm(3)
        before = {k: v.clone() for k, v in sync.state_dict().items()}
        with pytest.raises(ValueError, match=r"SyncL2BatchNorm.*input on cpu.*cuda") as info:
            sync(torch.randn(4, 3, 2))
        assert isinstance(info.value.__cause__, RuntimeError)
        for key, value in sync.state_dict().items():
            assert torch.equal(value, before[key]), key
    finally:
        dist.destroy_process_group()
