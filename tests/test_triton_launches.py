"""Kernel launches per call, and no host synchronization, on the Triton and pure paths.

On the Triton path a training forward launches 2 kernels where the finalize is folded
into the output pass (small ``N * C``, ``ops.plan``) and 3 otherwise, its backward
2 or 3 (one fewer for ``(N, C)`` input), an eval forward 1 or 2; besides them a call runs
only allocations and views (no other device work: no zero fill, no copy, no cast) and
never reads a value back to the host (``aten::_local_scalar_dense``, what ``.item()``,
``bool(t)`` and ``float(t)`` run), which is what lets a training step be captured in a
CUDA graph. Recorded with a ``TorchDispatchMode`` around the layer and around the
operators' own bodies; operations inside the launches (the interpreter's) are not
counted. The GPU's own count, from the profiler, is in ``test_triton_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch

from _triton_support import (
    DEVICE,
    SYNC,
    Recorder,
    make_interpreter_fixture,
    make_launches_fixture,
    make_ops_fixture,
    make_prefer_fixture,
)
from l2bn import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d

triton_backend_ready = make_interpreter_fixture()
prefer_triton = make_prefer_fixture()
ops = make_ops_fixture()
launches = make_launches_fixture()

LAYER = {2: L2BatchNorm1d, 3: L2BatchNorm1d, 4: L2BatchNorm2d, 5: L2BatchNorm3d}
# Operations that launch no device work.
METADATA_ONLY = {
    "aten.empty.memory_format",
    "aten.empty_like.default",
    "aten.empty_strided.default",
    "aten.new_empty.default",
    "aten.view.default",
    "aten._unsafe_view.default",
    "aten.permute.default",
    "aten.detach.default",
    "aten.alias.default",
}


@pytest.fixture
def bodies(ops, launches, monkeypatch):
    """Run the operators' Python bodies directly (not as opaque operators), so that the
    recorder also sees what they do around their launches."""
    from l2bn._impl.triton import function

    def body(impl):
        return lambda *args: impl(*args, True)

    monkeypatch.setattr(function, "_train_forward", body(ops._train_forward))
    monkeypatch.setattr(function, "_train_backward", body(ops._train_backward))
    monkeypatch.setattr(function, "_eval_forward", body(ops._eval_forward))
    return launches


def _input(shape, layout, requires_grad=True):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(DEVICE).requires_grad_(requires_grad)


@pytest.mark.parametrize("folded", [True, False])
@pytest.mark.parametrize(
    "shape,layout,backward_launches,eval_launches",
    [
        ((3, 4, 5, 6), "contiguous", 3, 1),
        ((3, 4, 5, 6), "channels_last", 3, 1),
        ((6, 5), "contiguous", 2, 1),
        ((2, 16, 32, 32), "channels_last", 3, 2),  # a sample larger than one eval tile
    ],
)
def test_launches_and_nothing_else(
    shape, layout, backward_launches, eval_launches, folded, bodies, monkeypatch
):
    """Unfolded launch counts in the parameters; folded, the forward and the backward
    are each one launch shorter."""
    monkeypatch.setattr(bodies.ops, "FOLD_MAX_STATS", 2**62 if folded else 0)
    layer = LAYER[len(shape)](shape[1]).to(DEVICE)
    x = _input(shape, layout)
    with Recorder(bodies) as fwd:
        y = layer(x)
    assert len(bodies.take()) == 3 - folded
    dy = torch.randn_like(y)
    with Recorder(bodies) as bwd:
        y.backward(dy)
    assert len(bodies.take()) == backward_launches - folded
    layer.eval()
    with torch.no_grad(), Recorder(bodies) as evl:
        layer(x)
    assert len(bodies.take()) == eval_launches
    # The layer advances num_batches_tracked (one add_, as BatchNorm does); nothing else
    # but allocations and views runs between the launches.
    assert fwd.seen.count("aten.add_.Tensor") == 1
    fwd.seen.remove("aten.add_.Tensor")
    for name, seen in (("forward", fwd.seen), ("backward", bwd.seen), ("eval", evl.seen)):
        assert set(seen) <= METADATA_ONLY, (name, sorted(set(seen) - METADATA_ONLY))
    assert x.grad is not None and layer.weight.grad is not None


def test_default_path_of_small_statistics(bodies):
    """At the default threshold the tests' small shapes take the folded path: two
    launches per training pass, the finalize inside the output kernels."""
    layer = L2BatchNorm2d(4).to(DEVICE)
    y = layer(_input((3, 4, 5, 6), "contiguous"))
    assert bodies.take() == ["row_sums_kernel", "folded_affine_kernel"]
    y.backward(torch.randn_like(y))
    assert bodies.take() == ["grad_sums_kernel", "folded_grad_input_kernel"]


@pytest.mark.parametrize("folded", [True, False])
def test_launches_without_input_gradient(folded, bodies, monkeypatch):
    """Only parameter gradients wanted: the input-gradient pass is not launched (nor,
    on either path, the folded kernel that would compute it)."""
    monkeypatch.setattr(bodies.ops, "FOLD_MAX_STATS", 2**62 if folded else 0)
    layer = L2BatchNorm2d(4).to(DEVICE)
    y = layer(_input((3, 4, 5, 6), "contiguous", requires_grad=False))
    bodies.take()
    y.sum().backward()
    assert bodies.take() == ["grad_sums_kernel", "backward_finalize_kernel"]


@pytest.mark.parametrize("folded", [True, False])
def test_no_host_synchronization_on_the_triton_path(folded, launches, monkeypatch):
    """A training step (forward, backward) and an eval forward through the operators
    read nothing back to the host, on either path."""
    monkeypatch.setattr(launches.ops, "FOLD_MAX_STATS", 2**62 if folded else 0)
    layer = L2BatchNorm2d(4).to(DEVICE)
    x = _input((3, 4, 5, 6), "channels_last")
    with Recorder(launches) as rec:
        layer(x).square().sum().backward()
        layer.eval()
        with torch.no_grad():
            layer(x)
    assert len(launches.take()) == (2 + 2 + 1 if folded else 3 + 3 + 1)
    assert SYNC not in rec.seen
