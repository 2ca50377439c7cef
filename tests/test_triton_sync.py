"""SyncL2BatchNorm on the Triton kernels against the float64 reference of the whole batch.

Runs the kernels on a GPU, or in Triton's interpreter on CPU tensors (``_triton_support``;
``test_triton_interpreter.py`` runs this module in such a process). Every step checks,
besides the output, input gradient, parameter gradients and running statistics (paper
eqs. 1-3 on the global batch), that the Triton kernels ran (the launch recorder: a step on
the PyTorch passes launches none), that exactly one all-gather ran in forward and one
all-reduce in backward, and that nothing was read back to the host.

Two set-ups: a one-process group with the layer forced to synchronize (it would
otherwise delegate to L2BatchNorm), cheap enough for several dtypes and layouts; and two
spawned gloo processes (CPU only), with uneven and empty shares of the batch.
"""

from __future__ import annotations

import importlib
import math
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from _reference import reference_l2bn, relative_error
from _triton_support import (
    DEVICE,
    SYNC,
    LaunchRecorder,
    Recorder,
    make_interpreter_fixture,
    make_launches_fixture,
    make_ops_fixture,
    make_prefer_fixture,
)
from l2bn import backends
from l2bn._impl import dispatch, pytorch
from l2bn._impl import triton as triton_backend
from l2bn._impl.sync_function import PYTORCH_PASSES, sync_passes
from l2bn.sync import SyncL2BatchNorm

triton_backend_ready = make_interpreter_fixture()
prefer_triton = make_prefer_fixture()
ops = make_ops_fixture()
launches = make_launches_fixture()

KERNELS = [
    "row_sums_kernel",
    "forward_finalize_kernel",
    "affine_kernel",  # forward
    "grad_sums_kernel",
    "grad_input_kernel",  # backward
]
OUTPUT_TOL = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float64: 1e-10}
STATS_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5, torch.float64: 1e-10}
WORLD = 2


def _format(x: torch.Tensor, layout: str) -> torch.memory_format:
    if layout == "channels_last":
        return torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return torch.contiguous_format


def arrange(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.contiguous(memory_format=_format(x, layout))


def _batch(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 samples with norms 10x apart (L2BN differs from BN) and channel offsets, and
    an upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    per_sample = (shape[0],) + (1,) * (len(shape) - 1)
    x = x * torch.empty(per_sample, dtype=torch.float64).uniform_(0.3, 3.0, generator=g)
    channels = torch.arange(shape[1], dtype=torch.float64) * (-1.0) ** torch.arange(shape[1])
    x = x + 0.5 * channels.view((1, shape[1]) + (1,) * (len(shape) - 2))
    return x, torch.randn(shape, generator=g, dtype=torch.float64)


def _layer(c: int, affine: bool = True, dtype: torch.dtype = torch.float32) -> SyncL2BatchNorm:
    """A layer with non-default parameters and running statistics (the same on every rank)."""
    layer = SyncL2BatchNorm(c, affine=affine, dtype=dtype).to(DEVICE)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        if affine:
            layer.weight.copy_(torch.rand(c, generator=g) + 0.5)
            layer.bias.copy_(torch.randn(c, generator=g))
        layer.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
        layer.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return layer


def _reference(layer: SyncL2BatchNorm, x: torch.Tensor, dy: torch.Tensor):
    """``(y, dx, dweight, dbias, running_mean, running_var)`` of the float64 reference on the
    whole batch ``x``, from the layer's current state."""

    def f64(t, grad=False):
        if t is None:
            return None
        t = t.detach().double().cpu().clone()
        return t.requires_grad_() if grad else t

    w, b = f64(layer.weight, True), f64(layer.bias, True)
    rm, rv = f64(layer.running_mean), f64(layer.running_var)
    xg = x.detach().double().cpu().requires_grad_()
    args = (layer.momentum, layer.eps, layer.l2_eps, layer.scale)
    y = reference_l2bn(xg, rm, rv, w, b, True, *args)
    y.backward(dy.double().cpu())
    # The batch tells L2BN from BN: a layer degraded to BN would fail the comparison.
    plain = xg.detach()
    bn = F.batch_norm(plain, None, None, training=True)
    assert relative_error(bn, reference_l2bn(plain, None, None, training=True)) > 1e-2
    grads = (None, None) if w is None else (w.grad, b.grad)
    return [y.detach(), xg.grad, *grads, rm, rv]


class Collectives:
    """Counts the ``torch.distributed`` collectives run (wrapped in place, by ``patch``)."""

    GATHERS = ("all_gather_into_tensor", "all_gather_single", "all_gather")
    OTHERS = ("all_reduce", "broadcast", "reduce_scatter_tensor", "all_to_all_single")

    def __init__(self, patch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        for name in self.GATHERS + self.OTHERS:
            original = getattr(dist, name, None)
            if original is not None:
                kind = "all_gather" if name in self.GATHERS else name
                patch.setattr(dist, name, self._wrap(kind, original))

    def _wrap(self, kind, original):
        def collective(*args, **kwargs):
            self.calls.append(kind)
            return original(*args, **kwargs)

        return collective

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


def _step(
    layer, x64, dy64, part, dtype, layout, launches, collectives, world, on_triton=True
) -> list[str]:
    """One training step of ``layer`` on this process's share ``part`` of the global batch
    ``x64`` in ``dtype`` and ``layout``, checked against the float64 reference of the whole
    (rounded) batch; ``on_triton``: nothing may be read back to the host (the PyTorch
    passes do on CPU, by design) where this share holds more than one value per channel
    (with one or none, the group's count is read to refuse a batch of one value).
    Returns the kernels launched."""
    x_all, dy_all = x64.to(dtype), dy64.to(dtype)
    expected = _reference(layer, x_all, dy_all)
    layer.zero_grad()
    x = arrange(x_all[part], layout).to(DEVICE).requires_grad_()
    dy = arrange(dy_all[part], layout).to(DEVICE)
    collectives.take()
    launches.take()
    with Recorder(launches) as recorder:
        y = layer(x)
        forward = collectives.take()
        y.backward(dy)
        backward = collectives.take()
    kernels = launches.take()
    assert (forward, backward) == (["all_gather"], ["all_reduce"])
    reads_count = x.numel() <= x.shape[1]  # see l2bn._impl.sync_stats.check_global_count
    assert SYNC not in recorder.seen or not on_triton or reads_count
    grads = [None if p is None else p.grad.detach() for p in (layer.weight, layer.bias)]
    for grad in grads:
        if grad is not None and world > 1:
            dist.all_reduce(grad)  # each rank holds its share of the sums (DDP adds them)
    actual = [y.detach(), x.grad, *grads, layer.running_mean, layer.running_var]
    names = ("y", "dx", "dweight", "dbias", "running_mean", "running_var")
    for i, (name, a, e) in enumerate(zip(names, actual, expected, strict=True)):
        if e is None:
            assert a is None, name
            continue
        if i < 2:  # full-size: this share, in the input's dtype and layout
            e = e[part]
            assert a.dtype == dtype, name
            assert a.is_contiguous(memory_format=_format(a, layout)), name
        assert a.shape == e.shape, name
        tol = OUTPUT_TOL[dtype] if i < 2 else STATS_TOL[dtype]
        if e.numel():
            err = relative_error(a.cpu(), e)
            assert err < tol, (name, err, dtype, layout, part)
    return kernels


# --------------------------------------------------------------------------------------
# One process, the layer forced to synchronize


@pytest.fixture(scope="module")
def group_of_one(triton_backend_ready):
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    backend = "nccl" if DEVICE == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


@pytest.fixture
def collectives(monkeypatch, group_of_one):
    # A one-process group would make the layer delegate to L2BatchNorm: claim two.
    monkeypatch.setattr(SyncL2BatchNorm, "_group_size", lambda self: WORLD)
    return Collectives(monkeypatch)


CASES = [
    ((4, 3, 5, 6), "contiguous", torch.float32, True),
    ((4, 3, 5, 6), "channels_last", torch.bfloat16, True),
    ((3, 2, 3, 4, 5), "channels_last", torch.float16, False),
    ((6, 5), "contiguous", torch.float16, True),
    ((4, 3, 7), "contiguous", torch.float32, False),
]


@pytest.mark.parametrize("shape,layout,dtype,affine", CASES)
def test_one_process_matches_reference(shape, layout, dtype, affine, launches, collectives):
    """Two steps (running statistics carried over), every kernel on the Triton path."""
    layer = _layer(shape[1], affine)
    for step in range(2):
        x64, dy64 = _batch(shape, seed=20 + step)
        part = slice(0, shape[0])
        kernels = _step(layer, x64, dy64, part, dtype, layout, launches, collectives, 1)
        assert kernels == KERNELS
    assert int(layer.num_batches_tracked) == 2


def test_one_process_multi_block_tiling(launches, collectives, ops, monkeypatch):
    """Tiny tiles: several channel blocks and position splits (the backward's row sums are
    then summed over the splits), several finalize programs."""
    tiny = ops.Tiling(
        tile=8,
        max_block_s=4,
        max_block_c=2,
        target_programs=64,
        finalize_block_c=2,
        finalize_tile=4,
        block_p=2,
        eval_sample_tile=4,
    )
    monkeypatch.setattr(ops, "TILING", tiny)
    shape = (3, 4, 5, 6)
    geo = ops.geometry(3, 4, 30, True)
    assert geo.n_cblocks > 1 and geo.n_splits > 1
    x64, dy64 = _batch(shape, seed=30)
    layer = _layer(4)
    kernels = _step(
        layer, x64, dy64, slice(0, 3), torch.float32, "channels_last", launches, collectives, 1
    )
    assert kernels == KERNELS


def test_float64_runs_the_pytorch_passes(launches, collectives):
    """Where the Triton backend does not apply (float64), the PyTorch passes run: no launch,
    same collectives, float64 accuracy."""
    shape = (4, 3, 5, 5)
    x64, dy64 = _batch(shape, seed=40)
    layer = _layer(3, dtype=torch.float64)
    kernels = _step(
        layer, x64, dy64, slice(0, 4), torch.float64, "contiguous", launches, collectives, 1,
        on_triton=False,
    )  # fmt: skip
    assert kernels == []


def test_double_backward_across_processes_is_refused(collectives):
    layer = _layer(3)
    x = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=True)
    y = layer(x)
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(y.square().sum(), x, create_graph=True)


# --------------------------------------------------------------------------------------
# The dispatch rule and the operators


def test_sync_dispatch_rule():
    """``dispatch.sync_backend``: Triton where the Triton backend would run the call (an
    empty share decides as its peers do), the PyTorch passes elsewhere."""
    x = torch.randn(2, 3, 4, device=DEVICE)
    triton_passes = sync_passes(x, None, None)
    assert triton_passes is not PYTORCH_PASSES
    assert triton_passes.local_stats.__module__ == "l2bn._impl.triton.sync"

    def rule(t):
        return dispatch.sync_backend(t, None, None, True)

    for t in (x, x.bfloat16(), x.half(), x[:0], torch.empty(0, 3, 4, 4, device=DEVICE)):
        assert rule(t) is triton_backend, (t.dtype, t.shape)
    assert sync_passes(x[:0], None, None) is triton_passes
    assert rule(x.double()) is pytorch
    assert rule(torch.empty(2, 3, 0, device=DEVICE)) is pytorch  # no value per sample
    with backends.prefer("pytorch"):
        assert rule(x) is pytorch
    with backends.prefer("triton", strict=True), pytest.raises(RuntimeError, match="required"):
        rule(x.double())
    with backends.flags(triton=False), backends.prefer(None):
        assert rule(x) is pytorch
    if DEVICE == "cpu":
        with backends.prefer(None):  # CPU tensors: only while the backend is preferred
            assert rule(x) is pytorch and rule(x[:0]) is pytorch


def _op_samples():
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(3, 4, 3, 2, generator=g) + 1).to(DEVICE)
    dy = torch.randn(3, 4, 3, 2, generator=g).to(DEVICE)
    rho = (torch.rand(3, generator=g) + 0.5).to(DEVICE)
    mean = torch.randn(4, generator=g).to(DEVICE)
    p, q, r = torch.randn(3, 3, 4, generator=g).to(DEVICE).unbind(0)
    last = torch.channels_last
    return {
        "row_moments": (x.contiguous(memory_format=last), 1e-12, True),
        "row_moments_no_sample": (x[:0], 1e-12, False),
        "scale_shift": (x.half(), p, mean),
        "grad_row_sums": (dy.contiguous(memory_format=last), x, mean, rho),
        "grad_combine": (dy, x.contiguous(memory_format=last), p, q, r),
    }


@pytest.mark.parametrize(
    "name",
    ["row_moments", "row_moments_no_sample", "scale_shift", "grad_row_sums", "grad_combine"],
)
def test_opcheck(name):
    """Schema, fake-tensor and autograd-registration checks of the synchronized passes'
    operators; on CUDA also the AOT-dispatch check."""
    op = getattr(torch.ops.l2bn_triton, name.replace("_no_sample", "")).default
    utils = ["test_schema", "test_faketensor", "test_autograd_registration"]
    if DEVICE == "cuda":
        utils.append("test_aot_dispatch_dynamic")
    torch.library.opcheck(op, _op_samples()[name], test_utils=utils)


def test_operators_compute_their_formulas(launches):
    """The operators against their formulas in float64, and samples without values refused."""
    s = _op_samples()
    x, _l2_eps, _scale = s["row_moments"]
    rho, active, mean, var = torch.ops.l2bn_triton.row_moments(x, 1e-12, True)
    x64 = x.double().cpu()
    rows = x64.flatten(2)
    norm = x64.flatten(1).norm(dim=1)
    assert relative_error(rho.cpu(), norm / math.sqrt(x64[0].numel())) < 1e-6
    assert torch.equal(active.cpu(), torch.ones(3))
    assert relative_error(mean.cpu(), rows.mean(2)) < 1e-6
    assert relative_error(var.cpu(), rows.var(2, unbiased=False)) < 1e-5
    dy, x, mu, rho = s["grad_row_sums"]
    t1, t2 = torch.ops.l2bn_triton.grad_row_sums(dy, x, mu, rho)
    dy64, x64 = dy.double().cpu().flatten(2), x.double().cpu().flatten(2)
    centre = (mu.double().cpu()[None, :] * rho.double().cpu()[:, None])[..., None]
    assert relative_error(t1.cpu(), dy64.sum(2)) < 1e-6
    assert relative_error(t2.cpu(), (dy64 * (x64 - centre)).sum(2)) < 1e-6
    dy, x, p, q, r = s["grad_combine"]
    dx = torch.ops.l2bn_triton.grad_combine(dy, x, p, q, r)
    expect = p[..., None, None] * dy + q[..., None, None] * x + r[..., None, None]
    assert relative_error(dx.cpu(), expect.double().cpu()) < 1e-6
    x, a, b = s["scale_shift"]
    y = torch.ops.l2bn_triton.scale_shift(x, a, b)
    assert y.dtype == torch.float16
    expect = a.double()[..., None, None] * x.double() + b.double()[:, None, None]
    assert relative_error(y.cpu(), expect.cpu()) < 1e-3
    assert launches.take() == [
        "row_sums_kernel",
        "forward_finalize_kernel",
        "grad_sums_kernel",
        "grad_input_kernel",
        "affine_kernel",
    ]
    with pytest.raises(ValueError, match="empty"):
        torch.ops.l2bn_triton.row_moments(torch.empty(2, 3, 0, device=DEVICE), 1e-12, True)


def test_operators_refuse_arguments_they_cannot_address(launches):
    """The synchronized passes' operators called with arguments their kernels would read
    out of bounds or as another dtype: a clear error, nothing launched."""
    op = torch.ops.l2bn_triton
    x = torch.randn(3, 4, 5, device=DEVICE)
    rows, c4 = torch.ones(3, 4, device=DEVICE), torch.ones(4, device=DEVICE)
    rho = torch.ones(3, device=DEVICE)
    dtype = "float32, float16 or bfloat16"
    cases = [
        (TypeError, dtype, lambda: op.row_moments(x.int(), 1e-12, True)),
        (ValueError, r"shape \(N, C, \*\)", lambda: op.row_moments(x[0, 0], 1e-12, True)),
        (ValueError, "a of shape", lambda: op.scale_shift(x, rows[:2], c4)),
        (ValueError, "b of shape", lambda: op.scale_shift(x, rows, rows)),
        (ValueError, "dy", lambda: op.grad_row_sums(x[:2], x, c4, rho)),
        (ValueError, "mean", lambda: op.grad_row_sums(x, x, c4[:3], rho)),
        (ValueError, "rho", lambda: op.grad_row_sums(x, x, c4, c4)),
        (TypeError, "q", lambda: op.grad_combine(x, x, rows, rows.int(), rows)),
        (ValueError, "r of shape", lambda: op.grad_combine(x, x, rows, rows, c4)),
        (ValueError, "p of shape", lambda: op.grad_combine(x[:, :, 0], x[:, :, 0], c4, rows, rows)),
    ]
    for error, match, call in cases:
        with pytest.raises(error, match=match):
            call()
    assert launches.take() == []
    # A process holding no sample passes (nothing to launch).
    assert op.row_moments(x[:0], 1e-12, True)[0].shape == (0,)


# --------------------------------------------------------------------------------------
# Two gloo processes (CPU tensors in the interpreter)

# (global shape, layout, dtype, samples per rank): an empty share in float32, where the
# PyTorch passes' statistics would be float64 (the ranks' all-gather would not match).
TWO_PROCESS_CASES = [
    ((5, 3, 4, 4), "contiguous", torch.float32, (3, 2)),
    ((4, 3, 4, 4), "channels_last", torch.bfloat16, (1, 3)),
    ((6, 4), "contiguous", torch.float16, (4, 2)),
    ((5, 3, 6), "contiguous", torch.float32, (0, 5)),
]


def _two_process_checks(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=120),
    )
    try:
        assert triton_backend.UNAVAILABLE_REASON is None, triton_backend.UNAVAILABLE_REASON
        ops_module = importlib.import_module("l2bn._impl.triton.ops")
        with pytest.MonkeyPatch.context() as patch, backends.prefer("triton"):
            recorder = LaunchRecorder(ops_module)
            patch.setattr(ops_module, "_launch", recorder.wrap(ops_module._launch))
            counter = Collectives(patch)
            for i, (shape, layout, dtype, split) in enumerate(TWO_PROCESS_CASES):
                start = sum(split[:rank])
                part = slice(start, start + split[rank])
                x64, dy64 = _batch(shape, seed=50 + i)
                layer = _layer(shape[1])
                local = x64[part].to(dtype)
                assert sync_passes(local, layer.weight, layer.bias) is not PYTORCH_PASSES
                kernels = _step(layer, x64, dy64, part, dtype, layout, recorder, counter, WORLD)
                assert kernels == (KERNELS if split[rank] else []), (rank, split, kernels)
        dist.barrier()  # both ranks done before either tears the group down
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(DEVICE == "cuda", reason="two processes share CPU tensors over gloo here")
def test_two_processes_match_reference(triton_backend_ready):
    """Shares 3/2, 1/3 (bfloat16, channels_last), 4/2 (float16, (N, C)) and 0/5 (float32):
    on each rank its slice of the output and input gradient, the sum of the ranks'
    parameter gradients and the running statistics match the reference of the whole
    batch; the Triton kernels ran on every rank holding samples; one all-gather and one
    all-reduce per step."""
    mp.spawn(_two_process_checks, args=(_free_port(),), nprocs=WORLD, join=True)
