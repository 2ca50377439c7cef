"""SyncL2BatchNorm on 2 gloo processes against L2BatchNorm on the whole batch in one process.

Loss normalization (why the gradients are compared the way they are): rank ``r`` holds
the slice ``x_r`` of the global batch and minimizes ``loss_r = sum(y_r * g_r)`` for a
fixed upstream gradient ``g``; the single process minimizes ``loss = sum(y * g) =
sum_r loss_r`` on the whole batch. ``SyncL2BatchNorm``'s backward all-reduces the
channel sums, so the input gradient on rank ``r`` is ``d(sum_r' loss_r')/dx_r``, the
matching slice of the single-process ``x.grad``: it is compared directly (DDP never
touches input gradients). Parameter gradients are each rank's share of the global sums
and DDP *averages* them over the ``W`` ranks, i.e. DDP computes the gradient of
``(1/W) * sum_r loss_r``: ``W * param.grad`` is compared with the single-process
gradient. The same holds for layers upstream of the norm (the convolutions below),
whose gradients flow through the synchronized input gradient. Sums are used rather
than per-rank means: with unequal splits, DDP's average of per-rank means is not the
mean over the global batch.

All checks run in one ``torch.multiprocessing.spawn`` of 2 processes; every rank
recomputes the single-process reference itself (same seeds) and checks its slice.
"""

from __future__ import annotations

import copy
import socket
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from _reference import relative_error
from l2bn import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d, convert_bn_to_l2bn
from l2bn.sync import SyncL2BatchNorm
from l2bn.sync_convert import convert_sync_l2batchnorm

WORLD = 2
SPLITS = ((5, 3), (8, 0), (0, 8))
TOL32, TOL64 = 1e-5, 1e-10


def _close(actual: Tensor, expected: Tensor, tol: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if expected.numel():
        err = relative_error(actual, expected)
        assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e}"


def _differs(actual: Tensor, other: Tensor, what: str) -> None:
    err = relative_error(actual, other)
    assert err > 1e-2, f"{what}: the outputs agree to {err:.1e}; the test cannot tell them apart"


def _bounds(rank: int, split: tuple[int, ...]) -> slice:
    start = sum(split[:rank])
    return slice(start, start + split[rank])


def _batch(shape: tuple[int, ...], dtype: torch.dtype, seed: int, offset: float = 0.5):
    """Samples with norms 10x apart (L2BN != BN), channel offsets, and an upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    per_sample = (shape[0],) + (1,) * (len(shape) - 1)
    x = x * torch.empty(per_sample, dtype=torch.float64).uniform_(0.3, 3.0, generator=g)
    channels = torch.arange(shape[1], dtype=torch.float64) * (-1.0) ** torch.arange(shape[1])
    x = x + offset * channels.view((1, shape[1]) + (1,) * (len(shape) - 2))
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    return x.to(dtype), dy.to(dtype)


def _init_layer(layer: nn.Module, seed: int) -> None:
    """Non-default parameters and running statistics (kept consistent across ranks)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in (layer.weight, layer.bias, layer.running_mean):
            if t is not None:
                t.copy_(torch.randn(t.shape, generator=g) * 0.3 + (1.0 if t is layer.weight else 0))
        if layer.running_var is not None:
            layer.running_var.copy_(torch.rand(layer.running_var.shape, generator=g) + 0.5)


def _average_grads_like_ddp(module: nn.Module) -> None:
    """What DDP's reducer does: all-reduce (sum) each gradient, then divide by world size."""
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def _check_split(
    rank: int,
    split: tuple[int, ...],
    layer_cls: type[nn.Module],
    shape: tuple[int, ...],
    dtype: torch.dtype,
    tol: float,
    use_ddp: bool,
    **kwargs,
) -> None:
    """Two training steps of SyncL2BatchNorm vs ``layer_cls`` on the whole batch."""
    c = shape[1]
    ref = layer_cls(c, dtype=dtype, **kwargs)
    _init_layer(ref, seed=11)
    sync = SyncL2BatchNorm(c, dtype=dtype, **kwargs)
    sync.load_state_dict(ref.state_dict())
    if use_ddp:
        model: nn.Module = DistributedDataParallel(sync)
    else:
        model = sync
    part = _bounds(rank, split)
    where = f"rank {rank}, split {split}, {layer_cls.__name__}{tuple(shape)} {dtype}"
    for step in range(2):
        x, dy = _batch(shape, dtype, seed=100 + step)
        x_ref = x.clone().requires_grad_()
        ref.zero_grad()
        y_ref = ref(x_ref)
        (y_ref * dy).sum().backward()

        x_loc = x[part].clone().requires_grad_()
        sync.zero_grad()
        y = model(x_loc)
        (y * dy[part]).sum().backward()
        if not use_ddp:
            _average_grads_like_ddp(sync)

        at = f"{where}, step {step}"
        _close(y, y_ref[part], tol, f"output ({at})")
        _close(x_loc.grad, x_ref.grad[part], tol, f"input grad ({at})")
        if ref.weight is not None:
            _close(sync.weight.grad * WORLD, ref.weight.grad, tol, f"weight grad ({at})")
            _close(sync.bias.grad * WORLD, ref.bias.grad, tol, f"bias grad ({at})")
        if ref.running_mean is not None:
            _close(sync.running_mean, ref.running_mean, tol, f"running_mean ({at})")
            _close(sync.running_var, ref.running_var, tol, f"running_var ({at})")
            assert int(sync.num_batches_tracked) == int(ref.num_batches_tracked) == step + 1
        if split[rank] and split[1 - rank]:
            # Statistics really crossed processes: local L2BN on the slice differs.
            local = layer_cls(c, dtype=dtype, **kwargs)
            local.load_state_dict(ref.state_dict())
            _differs(y.detach(), local(x[part]).detach(), f"sync vs local L2BN ({at})")


def _check_model_with_ddp(rank: int) -> None:
    """conv-BN-ReLU-conv-BN converted with convert_sync_l2batchnorm, under DDP, split 5/3.

    The convolutions have no bias, as usual before a norm: such a bias gets a gradient
    that is a near-cancelling sum, whose float32 relative error would say nothing.
    """
    torch.manual_seed(5)
    bn_model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 5, 1, bias=False), nn.BatchNorm2d(5),
    )  # fmt: skip
    ref = convert_bn_to_l2bn(copy.deepcopy(bn_model))
    sync_model = convert_sync_l2batchnorm(copy.deepcopy(bn_model))
    assert sum(isinstance(m, SyncL2BatchNorm) for m in sync_model.modules()) == 2
    ddp = DistributedDataParallel(sync_model)

    x, _ = _batch((8, 3, 6, 6), torch.float32, seed=21)
    _, dy = _batch((8, 5, 6, 6), torch.float32, seed=22)
    y_ref = ref(x)
    (y_ref * dy).sum().backward()
    part = _bounds(rank, (5, 3))
    y = ddp(x[part])
    (y * dy[part]).sum().backward()

    _close(y, y_ref[part], TOL32, f"model output (rank {rank})")
    bn_out = bn_model.train()(x)
    _differs(y_ref.detach(), bn_out.detach(), "L2BN model vs BN model")
    for (name, p_ref), p in zip(ref.named_parameters(), sync_model.parameters(), strict=True):
        _close(p.grad * WORLD, p_ref.grad, TOL32, f"grad of {name} (rank {rank})")
    for (name, b_ref), b in zip(ref.named_buffers(), sync_model.buffers(), strict=True):
        _close(b.double(), b_ref.double(), TOL32, f"buffer {name} (rank {rank})")


def _check_offsets(rank: int) -> None:
    """Channel offsets of 1e3: the global variance of xh is ~1e-6 against a mean of ~1.

    A synchronization by raw power sums (E[xh^2] - E[xh]^2 in float32) is off by >10%
    here; the gathered (count, mean, M2) merge must match float64 to 1e-4.
    """
    shape = (8, 4, 5, 6)
    x64, _ = _batch(shape, torch.float64, seed=31, offset=0.0)
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64).view(1, 4, 1, 1)
    x64 = x64 + 1e3 * signs
    ref = L2BatchNorm2d(4, momentum=1.0, dtype=torch.float64)
    ref(x64)
    sync = SyncL2BatchNorm(4, momentum=1.0)
    sync(x64.float()[_bounds(rank, (5, 3))])
    _close(sync.running_var.double(), ref.running_var, 1e-4, "running_var with offsets")
    _close(sync.running_mean.double(), ref.running_mean, 1e-6, "running_mean with offsets")


def _check_delegation(rank: int) -> None:
    """Eval mode and a one-process group compute exactly what L2BatchNorm computes."""
    x, dy = _batch((5, 3, 4, 4), torch.float32, seed=41 + rank)
    ref = L2BatchNorm2d(3)
    _init_layer(ref, seed=12)
    sync = SyncL2BatchNorm(3)
    sync.load_state_dict(ref.state_dict())
    ref.eval()
    sync.eval()
    assert torch.equal(sync(x), ref(x)), "eval mode must use the running statistics, no sync"

    singles = [dist.new_group([r]) for r in range(WORLD)]  # every rank creates every group
    alone = SyncL2BatchNorm(3, process_group=singles[rank])
    alone.load_state_dict(ref.state_dict())
    ref.train()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = alone(xa), ref(xb)
    (ya * dy).sum().backward()
    (yb * dy).sum().backward()
    assert torch.equal(ya, yb), "a one-process group must not synchronize"
    assert torch.equal(xa.grad, xb.grad)
    assert torch.equal(alone.weight.grad, ref.weight.grad)
    assert torch.equal(alone.running_var, ref.running_var)


def _check_zero_size_positions(rank: int) -> None:
    """A rank whose samples have no value (``(3, 4, 0, 6)``) adds nothing to the
    statistics: the other rank's output, gradients and running statistics are those of
    L2BN on its share alone; the empty rank gets empty output and input gradient. When
    every rank's input is empty the running statistics stay as they were (as BatchNorm)."""
    x, dy = _batch((5, 4, 5, 6), torch.float32, seed=51)
    ref = L2BatchNorm2d(4)
    _init_layer(ref, seed=13)
    sync = SyncL2BatchNorm(4)
    sync.load_state_dict(ref.state_dict())
    before = {k: v.clone() for k, v in sync.state_dict().items()}
    x_loc = (x.clone() if rank == 1 else torch.randn(3, 4, 0, 6)).requires_grad_()
    dy_loc = dy if rank == 1 else torch.randn(3, 4, 0, 6)
    y = sync(x_loc)
    (y * dy_loc).sum().backward()
    assert y.shape == x_loc.shape and x_loc.grad.shape == x_loc.shape
    x_ref = x.clone().requires_grad_()
    (ref(x_ref) * dy).sum().backward()
    _close(sync.running_mean, ref.running_mean, TOL32, f"running_mean (rank {rank})")
    _close(sync.running_var, ref.running_var, TOL32, f"running_var (rank {rank})")
    if rank == 1:
        _close(y, ref(x).detach(), TOL32, "output next to an empty rank")
        _close(x_loc.grad, x_ref.grad, TOL32, "input grad next to an empty rank")

    sync.load_state_dict(before)
    y = sync(torch.randn(2, 4, 0, 6, requires_grad=True))
    y.sum().backward()
    for key in ("running_mean", "running_var"):
        assert torch.equal(sync.state_dict()[key], before[key]), f"{key} moved, no values"


def _scenario_float32(rank: int) -> None:
    for split in SPLITS:
        _check_split(rank, split, L2BatchNorm2d, (8, 4, 5, 6), torch.float32, TOL32, True)
    _check_model_with_ddp(rank)
    _check_offsets(rank)
    _check_delegation(rank)
    _check_zero_size_positions(rank)


def _scenario_float64(rank: int) -> None:
    cases = (
        (L2BatchNorm1d, (8, 6), {"affine": False, "track_running_stats": False}),
        (L2BatchNorm1d, (8, 4, 7), {"scale": False, "eps": 1e-3}),
        (L2BatchNorm3d, (8, 3, 2, 3, 4), {"momentum": None}),
        (L2BatchNorm2d, (8, 4, 5, 6), {}),
    )
    for layer_cls, shape, kwargs in cases:
        for split in ((3, 5), (0, 8)):
            _check_split(rank, split, layer_cls, shape, torch.float64, TOL64, False, **kwargs)


def _in_group(rank: int, port: int, *scenarios: Callable[[int], None]) -> None:
    """Run ``scenarios`` on ``rank`` of a gloo group of ``WORLD`` processes, one thread."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        for scenario in scenarios:
            scenario(rank)
        # Both ranks done before either tears its group down: a rank that destroyed it
        # while the other still talked to it once aborted in gloo ("terminate called
        # without an active exception", CI 2026-12-01). Not after a failure: the other
        # rank may never arrive.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _worker(rank: int, port: int) -> None:
    _in_group(rank, port, _scenario_float32, _scenario_float64)


def _check_one_value_over_the_group(rank: int) -> None:
    """One value per channel over both ranks (rank 0 holds one, rank 1 none): both ranks
    raise L2BatchNorm's ValueError and keep their running statistics; then one value on
    each rank (two in all) trains as L2BatchNorm on those two samples, so no collective
    was left out of step (float64: the input gradient of two samples nearly cancels)."""
    sync = SyncL2BatchNorm(3, momentum=0.5, dtype=torch.float64)
    before = {k: v.clone() for k, v in sync.state_dict().items()}
    for one, none in (((1, 3), (0, 3)), ((1, 3, 1, 1), (2, 3, 0, 1))):
        x = torch.randn(one if rank == 0 else none, dtype=torch.float64, requires_grad=True)
        try:
            sync(x)
        except ValueError as error:
            assert "more than 1 value per channel" in str(error), error
        else:
            raise AssertionError(f"rank {rank}: {one} next to {none} was accepted")
        for key, value in sync.state_dict().items():
            assert torch.equal(value, before[key]), f"rank {rank}: {key} moved"
    x, dy = _batch((2, 3), torch.float64, seed=61)
    ref = L2BatchNorm1d(3, momentum=0.5, dtype=torch.float64)
    x_ref = x.clone().requires_grad_()
    y_ref = ref(x_ref)
    (y_ref * dy).sum().backward()
    part = slice(rank, rank + 1)
    x_loc = x[part].clone().requires_grad_()
    y = sync(x_loc)
    (y * dy[part]).sum().backward()
    _close(y, y_ref[part], TOL64, f"output, one value on each rank (rank {rank})")
    _close(x_loc.grad, x_ref.grad[part], TOL64, f"input grad (rank {rank})")
    _close(sync.running_var, ref.running_var, TOL64, f"running_var (rank {rank})")
    assert int(sync.num_batches_tracked) == 1


def _one_value_worker(rank: int, port: int) -> None:
    _in_group(rank, port, _check_one_value_over_the_group)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sync_matches_single_process() -> None:
    """One spawn of 2 gloo processes (DDP's first use imports torch._dynamo: ~10 s).

    float32 under DDP: splits 5/3, 8/0, 0/8, a converted conv model, 1e3 offsets,
    delegation in eval mode and in a one-process group. float64 with grads averaged by
    hand: (N, C) and (N, C, L) 1d, 3d, 2d; affine off, no running stats, scale off,
    momentum None.
    """
    mp.spawn(_worker, args=(_free_port(),), nprocs=WORLD, join=True)


def test_one_value_per_channel_over_the_group_is_refused_on_every_rank() -> None:
    """A spawn of 2 gloo processes without DDP (a few seconds)."""
    mp.spawn(_one_value_worker, args=(_free_port(),), nprocs=WORLD, join=True)
