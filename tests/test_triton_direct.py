"""Eager calls on the Triton path run the operators' bodies directly, not through the
dispatcher (``function._direct``); compiling, a dispatch or torch-function mode, or a
tensor subclass get the operators. Both ways run the same launches and give the same
bits, and a training forward bumps the running statistics' version counters once, as the
operator does. (A torch-function mode is not active in the backward, which the autograd
engine runs: there the body runs directly, as the operator would also have run unseen.)"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from _triton_support import (
    DEVICE,
    Recorder,
    make_interpreter_fixture,
    make_launches_fixture,
    make_ops_fixture,
    make_prefer_fixture,
)
from l2bn import L2BatchNorm1d, L2BatchNorm2d

triton_backend_ready = make_interpreter_fixture()
prefer_triton = make_prefer_fixture()
ops = make_ops_fixture()
launches = make_launches_fixture()

OPERATORS = ("_train_forward", "_train_backward", "_eval_forward")


class PassThrough(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.fixture
def operator_calls(ops, monkeypatch):
    """Counts the calls that go through the registered operators."""
    from l2bn._impl.triton import function

    counts = dict.fromkeys(OPERATORS, 0)

    def counting(name, op):
        def call(*args):
            counts[name] += 1
            return op(*args)

        return call

    for name in OPERATORS:
        monkeypatch.setattr(function, name, counting(name, getattr(function, name)))
    return counts


def _step(layer, x, dy):
    """A training forward and backward, then an eval forward: outputs, gradients and
    running statistics."""
    x = x.detach().clone().requires_grad_()
    layer.train()
    y = layer(x)
    y.backward(dy)
    layer.eval()
    with torch.no_grad():
        y_eval = layer(x)
    return (y, y_eval, x.grad, layer.weight.grad, layer.bias.grad, *layer.buffers())


@pytest.mark.parametrize(
    "shape,layout",
    [((3, 4, 5, 6), "contiguous"), ((3, 4, 5, 6), "channels_last"), ((6, 5), "contiguous")],
)
def test_direct_and_operator_calls_agree_bit_for_bit(shape, layout, operator_calls, launches):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen) * 3 + 1
    dy = torch.randn(shape, generator=gen)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        dy = dy.contiguous(memory_format=torch.channels_last)
    x, dy = x.to(DEVICE), dy.to(DEVICE)
    make = L2BatchNorm2d if len(shape) == 4 else L2BatchNorm1d
    direct_layer, operator_layer = make(shape[1]).to(DEVICE), make(shape[1]).to(DEVICE)
    with torch.no_grad():
        for layer in (direct_layer, operator_layer):
            layer.weight.copy_(torch.linspace(0.5, 1.5, shape[1]))
            layer.bias.copy_(torch.linspace(-1, 1, shape[1]))

    direct = _step(direct_layer, x, dy)
    assert operator_calls == dict.fromkeys(OPERATORS, 0)
    direct_launches = launches.take()
    with Recorder():
        through_operators = _step(operator_layer, x, dy)
    assert operator_calls == dict.fromkeys(OPERATORS, 1)
    assert launches.take() == direct_launches
    assert len(direct_launches) >= 3  # forward, backward and eval each launched kernels
    for a, b in zip(direct, through_operators, strict=True):
        assert torch.equal(a, b)
    # Not plain BatchNorm: each sample was divided by its own norm first.
    bn = torch.nn.functional.batch_norm(
        x.double(), None, None, direct_layer.weight.double(), direct_layer.bias.double(), True
    )
    assert (direct[0].double() - bn).abs().max() > 1e-2


def test_training_forward_bumps_the_running_statistics_versions_once(operator_calls):
    layer = L2BatchNorm2d(4).to(DEVICE)
    x = torch.randn(3, 4, 5, 6, device=DEVICE)
    for mode in (None, PassThrough):
        before = (layer.running_mean._version, layer.running_var._version)
        if mode is None:
            layer(x)
        else:
            with mode():
                layer(x)
        after = (layer.running_mean._version, layer.running_var._version)
        assert after == (before[0] + 1, before[1] + 1), mode
    assert operator_calls["_train_forward"] == 1  # the second call, through the operator


def test_a_dispatch_mode_sees_the_operators(operator_calls):
    layer = L2BatchNorm2d(4).to(DEVICE)
    x = torch.randn(3, 4, 5, 6, device=DEVICE, requires_grad=True)
    with Recorder() as rec:
        layer(x).sum().backward()
    assert "l2bn_triton.train_forward.default" in rec.seen
    assert "l2bn_triton.train_backward.default" in rec.seen
    assert operator_calls["_train_forward"] == operator_calls["_train_backward"] == 1


def test_only_plain_tensors_in_eager_mode_are_called_directly(ops):
    from l2bn._impl.triton import function

    class Tagged(torch.Tensor):
        pass

    x = torch.randn(3, 4, device=DEVICE)
    weight = torch.nn.Parameter(torch.ones(4, device=DEVICE))
    assert function._direct(x, weight, None)
    assert not function._direct(x.as_subclass(Tagged), weight, None)
    with PassThrough():
        assert not function._direct(x, weight, None)
    with Recorder():
        assert not function._direct(x, weight, None)


def test_direct_calls_launch_without_the_tracing_wrapper(ops, operator_calls, monkeypatch):
    """Outside an operator, ``wrap_triton`` dispatches every launch as a higher-order
    operator (slow on a GPU host); the direct calls launch straight from Triton, the
    operators through it."""
    wrapped = []

    def counting_wrap(kernel):
        wrapped.append(kernel)
        return torch.library.wrap_triton(kernel)

    monkeypatch.setattr(ops, "wrap_triton", counting_wrap)
    layer = L2BatchNorm2d(4).to(DEVICE)
    x = torch.randn(3, 4, 5, 6, device=DEVICE, requires_grad=True)
    layer(x).sum().backward()
    assert wrapped == [] and sum(operator_calls.values()) == 0
    with Recorder():
        layer(x).sum().backward()
    assert len(wrapped) >= 4 and operator_calls["_train_forward"] == 1


def test_direct_launches_restores_the_previous_setting_and_is_per_thread(ops):
    import threading

    on = lambda: getattr(ops._direct_launches, "on", False)  # noqa: E731
    assert not on()
    with ops.direct_launches():
        assert on()
        with pytest.raises(ValueError), ops.direct_launches():
            raise ValueError
        assert on()
        seen = []
        other = threading.Thread(target=lambda: seen.append(on()))
        other.start()
        other.join()
        assert seen == [False]  # another thread (the autograd engine's) is not affected
    assert not on()


def test_batched_gradients_go_through_the_operators_and_match_a_loop(operator_calls):
    """``is_grads_batched=True`` hands the backward a batched gradient, which the kernels
    cannot read: the operator runs (its batching rule loops over the vectors)."""
    layer = L2BatchNorm2d(3).to(DEVICE)
    x = torch.randn(4, 3, 2, 2, device=DEVICE, requires_grad=True)
    y = layer(x)
    vectors = torch.randn(2, *y.shape, device=DEVICE)
    inputs = (x, layer.weight, layer.bias)
    batched = torch.autograd.grad(y, inputs, vectors, retain_graph=True, is_grads_batched=True)
    assert operator_calls["_train_backward"] >= 1
    for i, v in enumerate(vectors):
        single = torch.autograd.grad(y, inputs, v, retain_graph=True)
        for b, s in zip(batched, single, strict=True):
            torch.testing.assert_close(b[i], s)


def test_a_profile_of_a_direct_call_names_the_operators(operator_calls):
    from torch.profiler import profile

    layer = L2BatchNorm2d(4).to(DEVICE)
    x = torch.randn(3, 4, 5, 6, device=DEVICE, requires_grad=True)
    with profile() as prof:
        layer(x).sum().backward()
        layer.eval()
        with torch.no_grad():
            layer(x)
    names = {event.name for event in prof.events()}
    for op in ("train_forward", "train_backward", "eval_forward"):
        assert f"l2bn_triton::{op}" in names
    assert sum(operator_calls.values()) == 0  # ranges of the direct calls, not the operators


def test_the_host_time_benchmark_forces_the_operators_for_its_ops_column(operator_calls):
    """``benchmarks/bench_gpu_host.py``'s ``ops`` contender goes through the operators,
    its ``direct`` one does not."""
    from _benchmark_scripts import load

    forced = load("bench_gpu_host").operators_forced
    layer = L2BatchNorm2d(4).to(DEVICE)
    x = torch.randn(3, 4, 5, 6, device=DEVICE)
    with forced(False):
        layer(x)
    assert operator_calls["_train_forward"] == 0
    with forced(True):
        layer(x)
    assert operator_calls["_train_forward"] == 1
    layer(x)  # restored on leaving
    assert operator_calls["_train_forward"] == 1
