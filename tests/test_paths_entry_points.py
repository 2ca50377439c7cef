"""The Python entry points of the eager CPU calls (``l2bn._C.train`` and ``eval_forward``,
csrc/entry_points.cpp) against ``torch.ops``: the same bits, the same dispatcher
behaviour, and ``torch.ops`` wherever ``__torch_function__`` must see the call."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from l2bn import L2BatchNorm2d, backends
from l2bn._impl import cpu

pytestmark = pytest.mark.skipif(
    not backends.available("cpu"), reason=str(backends.unavailable_reason("cpu"))
)

SHAPES = [
    ((6, 5, 7, 9), torch.contiguous_format),
    ((6, 5, 7, 9), torch.channels_last),
    ((6, 5, 2, 2), torch.channels_last),
    ((12, 7), torch.contiguous_format),
]


def _arguments(shape, fmt, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=dtype).contiguous(memory_format=fmt)
    c = shape[1]
    weight = torch.empty(c, dtype=dtype).uniform_(0.5, 1.5, generator=gen)
    bias = torch.empty(c, dtype=dtype).uniform_(-1, 1, generator=gen)
    dy = torch.randn(shape, generator=gen, dtype=dtype).contiguous(memory_format=fmt)
    return x, weight, bias, dy


def _train_step(call, shape, fmt):
    """One training forward and backward through ``call``: output, gradients, running
    statistics and how many times their version counters moved."""
    x, weight, bias, dy = _arguments(shape, fmt)
    x, weight, bias = (t.requires_grad_() for t in (x, weight, bias))
    c = shape[1]
    running_mean, running_var = torch.zeros(c, dtype=x.dtype), torch.ones(c, dtype=x.dtype)
    versions = running_mean._version, running_var._version
    y = call(x, weight, bias, running_mean, running_var, 0.1, 1e-5, 1e-12, True)
    y.backward(dy)
    moved = (running_mean._version - versions[0], running_var._version - versions[1])
    return [y.detach(), x.grad, weight.grad, bias.grad, running_mean, running_var], moved


@pytest.mark.parametrize(("shape", "fmt"), SHAPES)
def test_train_entry_gives_the_operators_bits(shape, fmt):
    entry, entry_moved = _train_step(cpu._train_entry, shape, fmt)
    ops, ops_moved = _train_step(torch.ops.l2bn.train.default, shape, fmt)
    for a, b in zip(entry, ops, strict=True):
        assert torch.equal(a, b)
    assert entry[0].stride() == ops[0].stride()
    assert entry_moved == ops_moved  # as BatchNorm, neither moves them
    assert not torch.equal(entry[4], torch.zeros_like(entry[4]))  # updated in place


@pytest.mark.parametrize(("shape", "fmt"), SHAPES)
def test_eval_entry_gives_the_operators_bits_and_graph(shape, fmt):
    x, weight, bias, _ = _arguments(shape, fmt)
    c = shape[1]
    stats = torch.rand(c, dtype=x.dtype) - 0.5, torch.rand(c, dtype=x.dtype) + 0.5
    args = (x, *stats, weight, bias, 1e-5, 1e-12, True)
    with torch.no_grad():
        expected = torch.ops.l2bn.eval_forward.default(*args)
    got = cpu._eval_entry(*args)
    assert torch.equal(got, expected) and got.stride() == expected.stride()
    assert got.grad_fn is None
    # Through autograd, as torch.ops: the C++ formula's node, and the same gradient.
    dy = torch.randn_like(x)
    grads = []
    for call in (cpu._eval_entry, torch.ops.l2bn.eval_forward.default):
        xg = x.detach().requires_grad_()
        y = call(xg, *args[1:])
        assert "EvalFunction" in y.grad_fn.name()
        (gx,) = torch.autograd.grad(y, xg, dy)
        grads.append(gx)
    assert torch.equal(*grads)
    with torch.no_grad():
        assert cpu._eval_entry(x.detach().requires_grad_(), *args[1:]).grad_fn is None


def _spy(monkeypatch):
    counts = {"_train": 0, "_train_entry": 0, "_eval_forward": 0, "_eval_entry": 0}
    for name in counts:
        original = getattr(cpu, name)

        def wrapper(*args, _name=name, _original=original):
            counts[_name] += 1
            return _original(*args)

        monkeypatch.setattr(cpu, name, wrapper)
    return counts


def _layer_calls(x):
    layer = L2BatchNorm2d(x.shape[1])
    layer(x.requires_grad_()).sum().backward()
    layer.eval()
    with torch.no_grad():
        layer(x)
    layer(x).sum().backward()  # eval with a graph: fine-tuning with frozen norms


def test_eager_layer_calls_go_through_the_entry_points(monkeypatch):
    counts = _spy(monkeypatch)
    _layer_calls(torch.randn(4, 3, 5, 5))
    assert counts == {"_train": 0, "_train_entry": 1, "_eval_forward": 0, "_eval_entry": 2}


class _Recording(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


def test_a_torch_function_mode_sees_the_operators(monkeypatch):
    counts = _spy(monkeypatch)
    mode = _Recording()
    with mode:
        _layer_calls(torch.randn(4, 3, 5, 5))
    assert counts == {"_train": 1, "_train_entry": 0, "_eval_forward": 2, "_eval_entry": 0}
    assert torch.ops.l2bn.train.default in mode.seen
    assert torch.ops.l2bn.eval_forward.default in mode.seen


def test_set_default_device_takes_the_operators(monkeypatch):
    counts = _spy(monkeypatch)
    with torch.device("cpu"):  # a TorchFunctionMode, as torch.set_default_device
        _layer_calls(torch.randn(4, 3, 5, 5))
    assert counts["_train"] == 1 and counts["_train_entry"] == 0


class _Tagged(torch.Tensor):
    """A subclass that overrides __torch_function__ and records what it sees."""

    seen: ClassVar[list] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_a_torch_function_subclass_sees_the_operator(monkeypatch):
    counts = _spy(monkeypatch)
    _Tagged.seen = []
    x = torch.randn(4, 3, 5, 5).as_subclass(_Tagged)
    L2BatchNorm2d(3)(x)
    assert counts["_train"] == 1 and counts["_train_entry"] == 0
    assert torch.ops.l2bn.train.default in _Tagged.seen


class _DispatchLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


def test_the_entry_points_keep_the_dispatcher(monkeypatch):
    """Dispatch modes, autograd and the profiler see the entry points' calls as they see
    torch.ops': they run below __torch_function__, on the dispatcher."""
    counts = _spy(monkeypatch)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    layer = L2BatchNorm2d(3)
    log = _DispatchLog()
    with log:
        y = layer(x)
    assert counts["_train_entry"] == 1
    assert torch.ops.l2bn.train_forward.default in log.seen
    assert y.grad_fn is not None
    with torch.profiler.profile() as prof:
        layer(x).sum().backward()
    names = {event.name for event in prof.events()}
    assert {"l2bn::train", "l2bn::train_forward", "l2bn::train_backward"} <= names


def test_errors_match_the_operators():
    x = torch.randn(4, 16, 3, 3)
    wrong = torch.zeros(8), torch.ones(8)  # 8 running values for 16 channels
    args = (x, None, None, *wrong, 0.1, 1e-5, 1e-12, True)
    with pytest.raises(RuntimeError) as from_ops:
        torch.ops.l2bn.train.default(*args)
    with pytest.raises(RuntimeError) as from_entry:
        cpu._train_entry(*args)
    assert str(from_entry.value) == str(from_ops.value)
    assert "expected 16 running statistics" in str(from_entry.value)
    stats = torch.zeros(8), torch.ones(8)
    eval_args = (torch.randn(4, 16), *stats, None, None, 1e-5, 1e-12, True)
    with pytest.raises(RuntimeError) as from_ops, torch.no_grad():
        torch.ops.l2bn.eval_forward.default(*eval_args)
    with pytest.raises(RuntimeError) as from_entry:
        cpu._eval_entry(*eval_args)
    assert str(from_entry.value) == str(from_ops.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.randn(2, 3),), r"l2bn\._C\.train takes 9 arguments, got 1"),
        (("x", None, None, None, None, 0.1, 1e-5, 1e-12, True), r"x must be a Tensor, not str"),
        ((torch.randn(2, 3), 1.0, None, None, None, 0.1, 1e-5, 1e-12, True), "weight must be"),
        ((torch.randn(2, 3), None, None, None, None, "0.1", 1e-5, 1e-12, True), "momentum"),
        ((torch.randn(2, 3), None, None, None, None, 0.1, torch.ones(2), 1e-12, True), "eps"),
    ],
)
def test_bad_arguments_raise_type_errors(args, message):
    with pytest.raises(TypeError, match=message):
        cpu._train_entry(*args)
    with pytest.raises(TypeError, match=r"l2bn\._C\.eval_forward takes 8 arguments, got 1"):
        cpu._eval_entry(torch.randn(2, 3))


@pytest.mark.parametrize(
    "scalars",
    [
        (np.float32(0.1), np.float32(1e-5), np.float64(1e-12), np.bool_(True)),
        (torch.tensor(0.1), torch.tensor([1e-5]), 1e-12, 1),
        (0, 1, 0, np.bool_(False)),
    ],
    ids=["numpy", "tensors-int-flag", "ints"],
)
def test_scalars_are_converted_as_torch_ops_converts_them(scalars):
    """numpy scalars, one-element tensors and ints, as hyperparameters from a config or a
    converted BatchNorm may carry them: the same as through torch.ops, train and eval."""
    momentum, eps, l2_eps, scale = scalars
    shape, fmt = SHAPES[0]
    x, weight, bias, _ = _arguments(shape, fmt)
    c = shape[1]
    outs = []
    for call in (cpu._train_entry, torch.ops.l2bn.train.default):
        stats = torch.zeros(c, dtype=x.dtype), torch.ones(c, dtype=x.dtype)
        y = call(x, weight, bias, *stats, momentum, eps, l2_eps, scale)
        outs.append((y, *stats))
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)
    stats = torch.rand(c, dtype=x.dtype), torch.rand(c, dtype=x.dtype) + 0.5
    args = (x, *stats, weight, bias, eps, l2_eps, scale)
    with torch.no_grad():
        assert torch.equal(cpu._eval_entry(*args), torch.ops.l2bn.eval_forward.default(*args))


def test_a_layer_with_numpy_hyperparameters_runs_in_every_mode():
    layer = L2BatchNorm2d(3, eps=np.float32(1e-5), momentum=np.float32(0.1))
    x = torch.randn(4, 3, 5, 5)
    layer(x)
    layer.eval()
    with_grad = layer(x.requires_grad_())  # eval recorded: through torch.ops
    with torch.no_grad():
        assert torch.equal(layer(x), with_grad.detach())
