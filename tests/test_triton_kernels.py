"""The Triton backend against the float64 reference (paper eqs. 1-3).

Runs the compiled kernels on a GPU, or the same kernels in Triton's interpreter on CPU
(``_triton_support``). Every comparison also records the kernels launched, so a test fails
if the call silently went to another backend or to the other of the two training paths:
``folded`` (the finalize folded into the output kernels, two launches per training pass)
and ``unfolded`` (three), each forced with ``ops.FOLD_MAX_STATS`` (the ``path`` fixture).
Shapes are tiny: the interpreter is slow.
"""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch

from _export_training import case as export_case
from _export_training import training_step
from _reference import adversarial_input, reference_l2bn, relative_error
from _triton_support import (
    DEVICE,
    make_interpreter_fixture,
    make_launches_fixture,
    make_ops_fixture,
    make_prefer_fixture,
)
from l2bn import L2BatchNorm2d, backends, l2_batch_norm
from l2bn._impl import triton as triton_backend

triton_backend_ready = make_interpreter_fixture()
prefer_triton = make_prefer_fixture()
ops = make_ops_fixture()
launches = make_launches_fixture()

FORWARD = ["row_sums_kernel", "forward_finalize_kernel", "affine_kernel"]
BACKWARD = ["grad_sums_kernel", "backward_finalize_kernel", "grad_input_kernel"]
FOLDED_FORWARD = ["row_sums_kernel", "folded_affine_kernel"]
FOLDED_BACKWARD = ["grad_sums_kernel", "folded_grad_input_kernel"]
PATHS = ["folded", "unfolded"]


def force_path(ops, monkeypatch, path: str) -> None:
    """Every training pass of the test takes ``path`` (whatever its shape)."""
    monkeypatch.setattr(ops, "FOLD_MAX_STATS", 2**62 if path == "folded" else 0)


@pytest.fixture(params=PATHS)
def path(request, ops, monkeypatch):
    force_path(ops, monkeypatch, request.param)
    return request.param


def arrange(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        return x.contiguous(memory_format=fmt)
    return x.contiguous()


def _params(c: int, affine: bool):
    g = torch.Generator().manual_seed(3)
    w = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    b = torch.randn(c, generator=g, dtype=torch.float64)
    rm = torch.randn(c, generator=g, dtype=torch.float64) * 0.1
    rv = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    return (w, b) if affine else (None, None), rm, rv


def run_triton(x, dy, affine=True, scale=True, param_dtype=torch.float32, momentum=0.1):
    """Training forward + backward, then eval, on the Triton path (``x`` already in its
    dtype and layout). Returns (y, dx, dweight, dbias, running_mean, running_var, eval y)."""
    (w, b), rm, rv = _params(x.shape[1], affine)

    def on(t):
        return None if t is None else t.to(DEVICE, param_dtype)

    w, b = (on(t).requires_grad_() if t is not None else None for t in (w, b))
    rm, rv = on(rm), on(rv)
    xg = x.to(DEVICE).detach().requires_grad_()
    y = l2_batch_norm(xg, rm, rv, w, b, True, momentum, 1e-5, 1e-12, scale)
    y.backward(dy.to(DEVICE))
    with torch.no_grad():
        y_eval = l2_batch_norm(xg, rm, rv, w, b, False, momentum, 1e-5, 1e-12, scale)
    grads = (w.grad, b.grad) if affine else (None, None)
    return [y, xg.grad, *grads, rm, rv, y_eval]


def run_reference(x, dy, affine=True, scale=True, momentum=0.1, dtype=torch.float64):
    """The same with the composite in ``dtype`` (float64: the reference) on CPU."""
    (w, b), rm, rv = _params(x.shape[1], affine)
    w, b, rm, rv = (None if t is None else t.to(dtype) for t in (w, b, rm, rv))
    if affine:
        w, b = w.requires_grad_(), b.requires_grad_()
    xg = x.detach().cpu().to(dtype).requires_grad_()
    y = reference_l2bn(xg, rm, rv, w, b, True, momentum, 1e-5, 1e-12, scale)
    y.backward(dy.cpu().to(dtype))
    with torch.no_grad():
        y_eval = reference_l2bn(xg, rm, rv, w, b, False, momentum, 1e-5, 1e-12, scale)
    grads = (w.grad, b.grad) if affine else (None, None)
    return [t if t is None else t.detach() for t in (y, xg.grad, *grads, rm, rv, y_eval)]


def folds(x: torch.Tensor, ops) -> bool:
    """Whether the training passes on ``x`` fold the finalize (``ops.plan`` decides)."""
    _x, strides = ops.addressable(x)
    return ops.plan(x.shape[0], x.shape[1], math.prod(x.shape[2:]), strides[1] == 1)[1]


def forward_launches(x: torch.Tensor, ops) -> list[str]:
    """The kernels of a training forward (on the path ``ops.plan`` chooses)."""
    return FOLDED_FORWARD if folds(x, ops) else FORWARD


def backward_launches(x: torch.Tensor, ops) -> list[str]:
    """The kernels of a training backward with the input gradient (no ``grad_sums`` for
    ``(N, C)`` input, whose finalize reads ``dy`` and ``x``)."""
    kernels = FOLDED_BACKWARD if folds(x, ops) else BACKWARD
    return kernels if x.dim() > 2 else kernels[1:]


def expected_launches(x: torch.Tensor, ops) -> list[str]:
    """The kernels of a training forward, its backward, and an eval forward."""
    c, m = x.shape[1], math.prod(x.shape[2:])
    fits = ops._pow2(c) * ops._pow2(m) <= ops.TILING.eval_sample_tile
    evaluate = ["eval_sample_kernel"] if fits else ["row_sums_kernel", "affine_kernel"]
    return forward_launches(x, ops) + backward_launches(x, ops) + evaluate


NAMES = ("y", "dx", "dweight", "dbias", "running_mean", "running_var", "eval y")
FULL_SIZE = {"y", "dx", "eval y"}
# (shape, layout): NCHW and channels_last in 2d and 3d, (N, C, L), (N, C).
CASES = [
    ((3, 4, 5, 6), "contiguous"),
    ((3, 4, 5, 6), "channels_last"),
    ((2, 3, 3, 4, 5), "contiguous"),
    ((2, 3, 3, 4, 5), "channels_last"),
    ((4, 3, 7), "contiguous"),
    ((6, 5), "contiguous"),
]
# Full-size outputs are rounded to the input dtype; statistics and parameter gradients
# are float32 computations on the (rounded) inputs.
OUTPUT_TOL = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def compare(x, dy, launches, tol_stats=1e-5, **kw):
    ours = run_triton(x, dy, **kw)
    assert launches.take() == expected_launches(x, launches.ops)
    ref = run_reference(x, dy, **{k: v for k, v in kw.items() if k != "param_dtype"})
    errors = {}
    for name, a, r in zip(NAMES, ours, ref, strict=True):
        if r is None:
            assert a is None, name
            continue
        assert a.device.type == DEVICE and a.shape == r.shape, name
        if name in FULL_SIZE:
            assert a.dtype == x.dtype, name
        errors[name] = relative_error(a.cpu(), r)
    for name, err in errors.items():
        tol = OUTPUT_TOL[x.dtype] if name in FULL_SIZE else tol_stats
        assert err < tol, (name, err, errors)
    return ours


@pytest.mark.parametrize("shape,layout", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("affine,scale", [(True, True), (False, False)])
def test_matches_reference(shape, layout, dtype, affine, scale, path, launches):
    g = torch.Generator().manual_seed(11)
    x = arrange((torch.randn(shape, generator=g) * 3 + 0.5).to(dtype), layout)
    dy = arrange(torch.randn(shape, generator=g).to(dtype), layout)
    ours = compare(x, dy, launches, affine=affine, scale=scale)
    if layout == "channels_last":
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        for t in (ours[0], ours[1], ours[-1]):
            assert t.is_contiguous(memory_format=fmt)


def test_half_parameters_and_running_statistics(path, launches):
    """A layer converted with ``.half()``: float16 parameters and running statistics are
    read and written in their dtype, computed in float32."""
    g = torch.Generator().manual_seed(12)
    x = (torch.randn(4, 3, 5, 5, generator=g) * 2).half()
    dy = torch.randn(4, 3, 5, 5, generator=g).half()
    compare(x, dy, launches, tol_stats=2e-3, param_dtype=torch.float16)


@pytest.mark.parametrize("weight_dtype", [torch.float16, torch.bfloat16], ids=str)
def test_bias_gradient_in_its_own_dtype_beside_a_narrower_weight(weight_dtype, path, launches):
    """A float32 bias beside a float16 or bfloat16 weight (mixed parameter dtypes are
    accepted): the bias gradient is the float32 sum of ``dy``, not one rounded to the
    weight's dtype (bfloat16 was 0.4% off; float16 overflowed to inf past 65504)."""
    g = torch.Generator().manual_seed(15)
    shape = (4, 3, 8, 8)
    x = torch.randn(shape, generator=g) * 2 + 0.5
    dy = torch.randn(shape, generator=g) + 3.0
    dy[:, 2] = 300.0  # channel 2: sum 76800, past float16's largest value
    w = (torch.rand(3, generator=g) + 0.5).to(DEVICE, weight_dtype).requires_grad_()
    b = torch.zeros(3, device=DEVICE).requires_grad_()
    xg = x.to(DEVICE).requires_grad_()
    l2_batch_norm(xg, None, None, w, b, training=True).backward(dy.to(DEVICE))
    assert launches.take() == forward_launches(x, launches.ops) + backward_launches(x, launches.ops)
    assert b.grad.dtype == torch.float32 and w.grad.dtype == weight_dtype
    expected = dy.double().sum((0, 2, 3))
    assert relative_error(b.grad.cpu(), expected) < 1e-6, (b.grad, expected)


@pytest.mark.parametrize("kind", ["offset", "norms"])
@pytest.mark.parametrize(
    "shape,layout",
    [((12, 6), "contiguous"), ((5, 4, 6, 7), "contiguous"), ((5, 4, 6, 7), "channels_last")],
)
def test_adversarial_float32(kind, shape, layout, path, launches):
    """Channel offsets of 1e3 and sample norms 1e6 apart: within twice the error of the
    float32 composite (F.normalize + native F.batch_norm), and 1e-5 where it reaches it."""
    x64 = arrange(adversarial_input(kind, shape), layout)
    dy = arrange(torch.randn(shape, generator=torch.Generator().manual_seed(3)), layout)
    errors = within_the_float32_composite(x64, dy, launches)
    if kind == "norms":
        assert all(e < 1e-5 for e in errors.values()), errors


def within_the_float32_composite(x64, dy, launches) -> dict[str, float]:
    """The Triton path on ``x64`` in float32: each output within twice the error of the
    float32 composite (F.normalize + native F.batch_norm) against the float64 reference,
    or 1e-5; returns the relative errors by output."""
    ours = run_triton(x64.float(), dy)
    assert launches.take() == expected_launches(x64, launches.ops)
    reference = run_reference(x64, dy)
    composite = run_reference(x64, dy, dtype=torch.float32)
    errors = {}
    for name, a, r, c in zip(NAMES, ours, reference, composite, strict=True):
        e_ours, e_comp = relative_error(a.cpu(), r), relative_error(c, r)
        assert e_ours < max(1e-5, 2 * e_comp), (name, e_ours, e_comp)
        errors[name] = e_ours
    return errors


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_rows_whose_first_value_is_an_outlier(layout, path, launches):
    """Rows of 1000 + N(0, 1) whose first position holds 0: the row sums' shift was that
    first value, 1000 away from the row's mean, and the sums of x - k cancelled (row
    variance 7e-4 off, outputs and gradients 7e-5). Within twice the float32 composite's
    error, and 1e-5."""
    g = torch.Generator().manual_seed(11)
    shape = (4, 2, 64, 64)
    x64 = torch.randn(shape, generator=g, dtype=torch.float64) + 1000.0
    x64[:, :, 0, 0] = 0.0
    x64 = arrange(x64, layout)
    dy = arrange(torch.randn(shape, generator=g), layout)
    within_the_float32_composite(x64, dy, launches)


@pytest.mark.parametrize("shape", [(5, 4, 3, 3), (8, 6)])
def test_zero_and_nan_samples(shape, path, launches):
    """An all-zero sample (norm clamped by l2_eps) stays finite and matches the reference;
    a NaN poisons the batch statistics (every training output), as in BatchNorm, and in
    eval only its own sample."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(shape, generator=g)
    x[1] = 0
    dy = torch.randn(shape, generator=g)
    ours = compare(x, dy, launches)
    assert all(torch.isfinite(t).all() for t in ours if t is not None)
    x[2].view(-1)[0] = float("nan")
    c = shape[1]
    rm, rv = torch.zeros(c, device=DEVICE), torch.ones(c, device=DEVICE)
    y = l2_batch_norm(x.to(DEVICE), rm, rv, training=True)
    y_eval = l2_batch_norm(x.to(DEVICE), torch.zeros_like(rm), torch.ones_like(rv))
    assert launches.take() == [*forward_launches(x, launches.ops), "eval_sample_kernel"]
    assert torch.isnan(y).all() and torch.isnan(rm).all()
    assert torch.isnan(y_eval[2]).all()
    assert torch.isfinite(y_eval[[0, 1, 3]]).all()


@pytest.mark.parametrize("shape,layout", [((3, 4, 5, 6), "channels_last"), ((7, 5), "contiguous")])
def test_multi_block_tiling(shape, layout, path, launches, ops, monkeypatch):
    """Tiny tiles: several channel and position blocks, positions split over programs,
    several finalize programs (unfolded) or channel blocks walked by every program
    (folded), several sample chunks and partial-sum chunks, folded programs covering
    several position blocks, and the two-kernel eval."""
    tiny = ops.Tiling(
        tile=8,
        max_block_s=4,
        max_block_c=2,
        target_programs=16,
        finalize_block_c=2,
        finalize_tile=4,
        block_p=2,
        eval_sample_tile=4,
    )
    monkeypatch.setattr(ops, "TILING", tiny)
    n, c, m = shape[0], shape[1], math.prod(shape[2:])
    geo, folded = ops.plan(n, c, m, layout == "channels_last")
    assert folded == (path == "folded")
    assert geo == ops.geometry(n, c, m, layout == "channels_last", tiny)
    assert geo.n_cblocks > 1 and (geo.n_splits > 1 or len(shape) == 2)
    assert ops._finalize_block_n(n, geo.block_c) < n  # several sample chunks
    g = torch.Generator().manual_seed(13)
    x = arrange(torch.randn(shape, generator=g) * 2 + 1, layout)
    dy = arrange(torch.randn(shape, generator=g), layout)
    compare(x, dy, launches)
    # The operators read the tiling at the call: the grids are the tiny tiling's.
    grids = dict(launches.log[: len(forward_launches(x, ops) + backward_launches(x, ops))])
    assert grids["row_sums_kernel"] == geo.reduction_grid
    if folded:
        n_groups, group_len = ops.folded_groups(geo)
        assert (group_len > geo.block_s) == (len(shape) > 2)  # several blocks per program
        grid = (n * geo.n_cblocks * n_groups,)
        assert grids["folded_affine_kernel"] == grids["folded_grad_input_kernel"] == grid
    else:
        assert grids["affine_kernel"] == geo.elementwise_grid
        assert grids["forward_finalize_kernel"] == (-(-shape[1] // tiny.finalize_block_c),)


def test_folding_threshold(ops):
    """One threshold on ``N * C`` decides both training passes: the CIFAR shapes fold at
    the default (their position splits capped so that the partials every folded program
    re-reads stay within it), ImageNet-sized statistics keep the three-launch path and its
    geometry, and so do small statistics whose capped splits would leave the row sums on
    a few long programs."""
    assert ops.FOLD_MAX_STATS == 8192 and ops.FOLD_MAX_SPLIT_TILES == 4
    most = ops.FOLD_MAX_SPLIT_TILES * ops.TILING.tile
    for n, c, m in [(128, 16, 32 * 32), (128, 64, 8 * 8), (128, 10, 1), (32, 64, 112 * 112)]:
        for channels_fast in (False, True):
            if (n, c, m, channels_fast) == (32, 64, 112 * 112, True):
                continue
            geo, folded = ops.plan(n, c, m, channels_fast)
            natural = ops.geometry(n, c, m, channels_fast)
            assert folded, (n, c, m, channels_fast)
            assert geo.n_splits * n * c <= ops.FOLD_MAX_STATS
            assert geo == natural or geo.block_c * geo.split_len <= most
            n_groups, group_len = ops.folded_groups(geo)
            assert n * geo.n_cblocks * n_groups <= max(ops.TILING.target_programs, n * c)
            assert group_len % geo.block_s == 0
    # A CIFAR stage in channels_last splits its positions 8 ways unfolded, 4 folded.
    assert ops.geometry(128, 16, 1024, True).n_splits == 8
    assert ops.plan(128, 16, 1024, True)[0].n_splits == 4
    # Unfolded: large statistics; channels_last with many positions per sample, where
    # the cap would leave 1 split of 16 (64 x 128 x 16 x 16) or 4 of 25 (32 x 64 x 56 x 56).
    for n, c, m, channels_fast in [
        (128, 65, 64, False),
        (256, 64, 56 * 56, True),
        (8192, 2, 1, False),
        (64, 128, 16 * 16, True),
        (32, 64, 56 * 56, True),
    ]:
        geo, folded = ops.plan(n, c, m, channels_fast)
        assert not folded and geo == ops.geometry(n, c, m, channels_fast), (n, c, m)


FOLD_CASES = [
    ((4, 6, 5, 3), "contiguous"),
    ((4, 6, 5, 3), "channels_last"),
    ((3, 5, 9), "contiguous"),
    ((9, 7), "contiguous"),
]


@pytest.mark.parametrize("shape,layout", FOLD_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_folded_and_unfolded_operators_agree(shape, layout, dtype, ops, launches, monkeypatch):
    """``train_forward`` and ``train_backward`` on both paths: the same output, saved
    statistics, running statistics and gradients (to float32 rounding; the full-size
    outputs to one rounding of their dtype), and not BatchNorm's output: the samples'
    norms differ by up to 4x."""
    g = torch.Generator().manual_seed(21)
    scales = torch.linspace(0.5, 2.0, shape[0]).view(-1, *([1] * (len(shape) - 1)))
    x = arrange((torch.randn(shape, generator=g) * scales + 0.3).to(dtype), layout).to(DEVICE)
    dy = arrange(torch.randn(shape, generator=g).to(dtype), layout).to(DEVICE)
    w = (torch.rand(shape[1], generator=g) + 0.5).to(DEVICE)
    b = torch.randn(shape[1], generator=g).to(DEVICE)
    results = {}
    for p in PATHS:
        force_path(ops, monkeypatch, p)
        rm, rv = torch.zeros(shape[1], device=DEVICE), torch.ones(shape[1], device=DEVICE)
        y, *stats = ops.train_forward(x, w, b, rm, rv, 0.1, 1e-5, 1e-12, True)
        grads = ops.train_backward(dy, x, w, *stats, True, True)
        kernels = launches.take()
        expected = FOLDED_FORWARD if p == "folded" else FORWARD
        assert kernels == expected + backward_launches(x, ops)
        results[p] = [y, *grads, *stats, rm, rv]
    names = ["y", "dx", "dweight", "dbias", "rho", "active", "row_mean", "row_var"]
    names += ["mean", "invstd", "running_mean", "running_var"]
    for name, a, r in zip(names, results["folded"], results["unfolded"], strict=True):
        assert a.shape == r.shape and a.dtype == r.dtype, name
        if r.numel() == 0:  # the row moments of (N, C) input: x itself
            continue
        tol = OUTPUT_TOL[dtype] if name in {"y", "dx"} and dtype != torch.float32 else 1e-6
        assert relative_error(a.cpu(), r.cpu()) <= tol, (name, relative_error(a.cpu(), r.cpu()))
    plain = torch.nn.functional.batch_norm(x.float(), None, None, w, b, training=True)
    assert relative_error(results["folded"][0].cpu(), plain.cpu()) > 0.05


def test_running_statistics_over_steps_with_cumulative_average(launches):
    """Three steps of a layer with ``momentum=None``: BatchNorm's cumulative average."""
    layer = L2BatchNorm2d(3, momentum=None).to(DEVICE)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    means, variances = [], []
    for step in range(3):
        x = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(step)) + step
        layer(x.to(DEVICE))
        rm, rv = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        reference_l2bn(x.double(), rm, rv, training=True, momentum=1.0)
        means.append(rm)
        variances.append(rv)
    assert launches.take() == forward_launches(x, launches.ops) * 3
    assert relative_error(layer.running_mean.cpu(), torch.stack(means).mean(0)) < 1e-5
    assert relative_error(layer.running_var.cpu(), torch.stack(variances).mean(0)) < 1e-5
    assert int(layer.num_batches_tracked) == 3


def test_double_backward_goes_through_the_composite(launches):
    """``create_graph=True``: the gradient is differentiable (the composite's) and equals
    the reference's second derivative."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    dy = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    results = []
    for preferred in ("triton", None):
        xg = x.float().to(DEVICE).requires_grad_()
        with backends.prefer(preferred):
            y = l2_batch_norm(xg, None, None, training=True)
            (dx,) = torch.autograd.grad(y, xg, dy.float().to(DEVICE), create_graph=True)
            (ddx,) = torch.autograd.grad(dx.square().sum(), xg)
        results.append((dx.detach().cpu(), ddx.cpu()))
        if preferred == "triton":
            assert launches.take() == forward_launches(x, launches.ops)
    assert relative_error(results[0][0], results[1][0]) < 1e-5
    assert relative_error(results[0][1], results[1][1]) < 1e-4


def test_strided_and_expanded_gradients(path, launches, ops):
    """Inputs in no supported layout are copied; an expanded ``dy`` (``y.sum()``) and a
    ``dy`` in another layout than ``x`` are read through their strides."""
    g = torch.Generator().manual_seed(6)
    base = torch.randn(4, 3, 6, 5, generator=g)
    x = base.transpose(-1, -2).contiguous().transpose(-1, -2)  # neither layout
    assert ops.ncm_strides(x) is None
    dy_cl = torch.randn(4, 3, 6, 5, generator=g).contiguous(memory_format=torch.channels_last)
    compare(x, dy_cl, launches)
    xg = base.to(DEVICE, copy=True).requires_grad_()
    l2_batch_norm(xg, None, None, training=True).sum().backward()
    assert launches.take() == forward_launches(base, ops) + backward_launches(base, ops)
    xr = base.double().requires_grad_()
    reference_l2bn(xr, None, None, training=True).sum().backward()
    assert (xg.grad.cpu() - xr.grad).abs().max() < 1e-5


def test_strided_parameters_and_running_statistics(path, launches):
    """Per-channel tensors that are strided views (the columns of a ``(C, 2)`` tensor:
    weight and bias of one, running mean and variance of another), which the kernels
    address as contiguous: the output, gradients, running statistics and eval output of
    the reference (they read and wrote each other's elements: output 50% off)."""
    g = torch.Generator().manual_seed(14)
    shape = (3, 4, 3, 3)
    x = torch.randn(shape, generator=g) * 2 + 0.5
    dy = torch.randn(shape, generator=g)
    params = torch.rand(4, 2, generator=g) + 0.5
    stats = torch.rand(4, 2, generator=g) + 0.5
    results = []
    for dtype, device in ((torch.float32, DEVICE), (torch.float64, "cpu")):
        p = params.to(device, dtype, copy=True).requires_grad_()
        s = stats.to(device, dtype, copy=True)
        (w, b), (rm, rv) = p.unbind(1), s.unbind(1)
        assert not (w.is_contiguous() or rm.is_contiguous())
        xg = x.to(device, dtype, copy=True).requires_grad_()
        norm = l2_batch_norm if dtype == torch.float32 else reference_l2bn
        y = norm(xg, rm, rv, w, b, True, 0.1, 1e-5, 1e-12, True)
        y.backward(dy.to(device, dtype))
        with torch.no_grad():
            y_eval = norm(xg, rm, rv, w, b, False, 0.1, 1e-5, 1e-12, True)
        results.append([y.detach(), xg.grad, p.grad, s, y_eval])
    assert launches.take() == expected_launches(x, launches.ops)
    for name, a, r in zip(["y", "dx", "dparams", "stats", "eval y"], *results, strict=True):
        assert relative_error(a.cpu(), r) < 1e-5, (name, relative_error(a.cpu(), r))


@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
@pytest.mark.parametrize("x_grad", [False, True], ids=["x", "x_grad"])
@pytest.mark.parametrize("operator", [False, True], ids=["direct", "operator"])
def test_running_statistics_that_require_grad(strided, x_grad, operator, launches):
    """Running statistics that require grad (accepted on every backend: training updates
    them in place outside the graph), contiguous or the columns of a ``(C, 2)`` tensor,
    with or without an input that requires grad, on the direct path and through the
    operators (``torch.device`` is a ``TorchFunctionMode``, as ``set_default_device``):
    the running statistics of the reference, and the output requires grad only through
    the input (the direct path raised for strided statistics without one, "a view of a
    leaf Variable that requires grad is being used in an in-place operation"; the
    operators' output required grad and its backward raised "no autograd formula")."""
    g = torch.Generator().manual_seed(16)
    x = torch.randn(4, 3, 3, 3, generator=g) * 2 + 0.5
    stats = torch.stack([torch.randn(3, generator=g) * 0.1, torch.rand(3, generator=g) + 0.5])
    expected = stats.double().clone()
    reference_l2bn(x.double(), expected[0], expected[1], training=True)
    if strided:
        leaves = [stats.t().contiguous().to(DEVICE).requires_grad_()]
        rm, rv = leaves[0].unbind(1)
    else:
        leaves = rm, rv = [s.to(DEVICE).requires_grad_() for s in stats]
    xg = x.to(DEVICE).requires_grad_(x_grad)
    with torch.device(DEVICE) if operator else contextlib.nullcontext():
        y = l2_batch_norm(xg, rm, rv, training=True)
        assert y.requires_grad == x_grad
        if x_grad:
            y.square().sum().backward()
    kernels = forward_launches(x, launches.ops) + (backward_launches(x, launches.ops) * x_grad)
    assert launches.take() == kernels
    got = torch.stack([rm.detach(), rv.detach()]).cpu()
    assert relative_error(got, expected) < 1e-6, (got, expected)
    assert all(t.grad is None for t in leaves)


def test_dispatch_rules(launches):
    """What the backend takes: not float64, not eval under autograd, not parameters on
    another device; CPU tensors only when preferred in the interpreter."""
    x = torch.randn(2, 3, 4, device=DEVICE)
    stats = torch.zeros(3, device=DEVICE)
    applies = triton_backend.applies
    assert applies(x, stats, stats, None, None, True, True)
    assert applies(x, stats, stats, None, None, False, False)
    assert not applies(x, stats, stats, None, None, False, True)
    assert not applies(x.double(), stats, stats, None, None, True, True)
    if DEVICE == "cpu":
        with backends.prefer(None):
            assert not applies(x, stats, stats, None, None, True, True)
            l2_batch_norm(x, None, None, training=True)
        assert launches.take() == []
        # torch.compile would trace into the interpreted kernels: not taken there; export
        # keeps the operators whole: taken.
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.compiler, "is_compiling", lambda: True)
            mp.setattr(torch.compiler, "is_exporting", lambda: False)
            assert not applies(x, stats, stats, None, None, True, True)
            mp.setattr(torch.compiler, "is_exporting", lambda: True)
            assert applies(x, stats, stats, None, None, True, True)
    else:
        assert not applies(x, stats.cpu(), stats.cpu(), None, None, True, True)
    with backends.flags(triton=False), backends.prefer(None):
        l2_batch_norm(x, None, None, training=True)
    assert launches.take() == []


def test_unavailable_reasons(monkeypatch):
    """Why the backend is not used: switched off, triton missing, no CUDA."""
    monkeypatch.setenv("L2BN_DISABLE_TRITON", "1")
    assert "L2BN_DISABLE_TRITON" in triton_backend._reason()
    monkeypatch.delenv("L2BN_DISABLE_TRITON")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA device" in triton_backend._reason()
    monkeypatch.setattr(triton_backend.importlib.util, "find_spec", lambda name: None)
    assert "triton is not installed" in triton_backend._reason()
    assert backends.available("triton")  # the module's state is untouched by _reason()
    assert "triton" in backends.names() and backends.names()[0] == "triton"


def _op_samples(ops):
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(3, 4, 3, 2, generator=g) + 1).to(DEVICE)
    w, b = torch.rand(4, device=DEVICE) + 0.5, torch.randn(4, device=DEVICE)
    rm, rv = torch.zeros(4, device=DEVICE), torch.ones(4, device=DEVICE)
    forward = (x, w, b, rm, rv, 0.1, 1e-5, 1e-12, True)
    _y, *stats = ops.train_forward(*forward)
    backward = (torch.randn_like(x), x, w, *stats, True, True)
    evaluate = (x.contiguous(memory_format=torch.channels_last), rm, rv, w, None, 1e-5, 0.0, False)
    train = (x, w, b, 1e-5, 1e-12, True)
    return {
        "train_forward": forward,
        "train": train,
        "train_backward": backward,
        "eval_forward": evaluate,
    }


def test_operators_refuse_arguments_they_cannot_address(launches):
    """The operators called directly (``l2bn.functional`` and the layers check their
    arguments first): a clear error, as the CPU operators give, for input of another dtype,
    too few dimensions or no value, per-channel tensors of another length, a gradient or
    saved statistics of another shape, and nothing launched (the kernels read such
    arguments out of bounds or as another dtype: silently wrong results)."""
    op = torch.ops.l2bn_triton
    x = torch.randn(3, 4, 5, device=DEVICE)
    c4, c5 = torch.ones(4, device=DEVICE), torch.ones(5, device=DEVICE)
    args = (0.1, 1e-5, 1e-12, True)
    _y, *stats = op.train_forward(x, c4, None, None, None, *args)
    launches.take()
    rho, active, row_mean, row_var, mean, invstd = stats
    dtype, dims, empty = "float32, float16 or bfloat16", r"shape \(N, C, \*\)", "non-empty"
    cases = [
        (TypeError, dtype, lambda: op.train_forward(x.int(), None, None, None, None, *args)),
        (TypeError, dtype, lambda: op.eval_forward(x.double(), c4, c4, None, None, 1e-5, 0, True)),
        (ValueError, dims, lambda: op.train(x[0, 0], None, None, 1e-5, 1e-12, True)),
        (ValueError, empty, lambda: op.train_forward(x[:0], None, None, None, None, *args)),
        (ValueError, "weight", lambda: op.train_forward(x, c5, None, None, None, *args)),
        (ValueError, "running_mean", lambda: op.train_forward(x, None, None, c5, c4, *args)),
        (ValueError, "bias", lambda: op.train(x, None, c4.view(2, 2), 1e-5, 1e-12, True)),
        (ValueError, "running_var", lambda: op.eval_forward(x, c4, c5, None, None, 1e-5, 0, True)),
        (TypeError, "weight", lambda: op.eval_forward(x, c4, c4, c4.int(), None, 1e-5, 0, True)),
        (ValueError, "dy", lambda: op.train_backward(x[:2], x, c4, *stats, True, True)),
        (ValueError, "weight", lambda: op.train_backward(x, x, c5, *stats, True, True)),
        (ValueError, "rho", lambda: op.train_backward(x, x, None, rho[:2], *stats[1:], True, True)),
        (
            ValueError,
            "row_mean",
            lambda: op.train_backward(
                x, x, None, rho, active, row_mean[:2], row_var, mean, invstd, True, True
            ),
        ),
        (
            ValueError,
            "invstd",
            lambda: op.train_backward(x, x, None, *stats[:5], invstd[:3], True, True),
        ),
    ]
    for error, match, call in cases:
        with pytest.raises(error, match=match):
            call()
    assert launches.take() == []


@pytest.mark.parametrize("name", ["train_forward", "train", "train_backward", "eval_forward"])
def test_opcheck(name, path, ops):
    """Schema, fake-tensor (meta) and autograd-registration checks of each operator; on
    CUDA also the AOT-dispatch check (the interpreter's kernels cannot be traced)."""
    op = getattr(torch.ops.l2bn_triton, name).default
    utils = ["test_schema", "test_faketensor", "test_autograd_registration"]
    if DEVICE == "cuda":
        utils.append("test_aot_dispatch_dynamic")
    torch.library.opcheck(op, _op_samples(ops)[name], test_utils=utils)


@pytest.mark.parametrize("training", [False, True])
def test_export_keeps_the_operators(training):
    """``torch.export`` records the Triton operators (eval; training under no_grad: the
    functional ``train``, the program updating the running statistics) and the exported
    program computes the same output."""
    layer = L2BatchNorm2d(4).to(DEVICE).train(training)
    x = torch.randn(3, 4, 5, 5, device=DEVICE) * 2 + 1
    with torch.no_grad():
        exported = torch.export.export(layer, (x,))
        graph = str(exported.graph)
        assert ("l2bn_triton.train.default" if training else "l2bn_triton.eval_forward") in graph
        x2 = torch.randn(3, 4, 5, 5, device=DEVICE) * 3
        eager = L2BatchNorm2d(4).to(DEVICE).train(training)
        torch.testing.assert_close(exported.module()(x2), eager(x2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_exported_training_program_trains_as_eager(dtype, path, launches):
    """``torch.export(model.train())`` of Conv2d -> L2BatchNorm2d records the functional
    ``l2bn_triton.train`` (not the composite, not the mutating ``train_forward``, which
    carries no autograd formula): a training step of the exported module runs the Triton
    kernels both ways and gives the output, the input, conv and L2BN gradients and the
    running statistics of eager, and of the float64 reference."""
    x, probe, net, reference = export_case(dtype)
    x, probe, net = x.to(DEVICE), probe.to(DEVICE), net.to(DEVICE)
    program = torch.export.export(copy.deepcopy(net), (x,))
    graph = str(program.graph)
    assert "l2bn_triton.train.default" in graph, graph
    for absent in ("train_forward", "batch_norm", "vector_norm", "l2bn.train"):
        assert absent not in graph, (absent, graph)
    launches.take()  # export traces on fake tensors: no launch
    exported = training_step(program.module(), x, probe)
    forward, backward = (FOLDED_FORWARD, FOLDED_BACKWARD) if path == "folded" else (
        FORWARD, BACKWARD)  # fmt: skip
    assert launches.take() == forward + backward
    eager = training_step(copy.deepcopy(net), x, probe)
    assert launches.take() == forward + backward
    limit = 1e-4 if dtype == torch.float32 else 3e-2  # bfloat16: 2**-8 per rounding
    for name, value in exported.items():
        assert value is not None, f"{name}: no gradient"
        assert value.dtype == eager[name].dtype, name
        for expected in (eager[name], reference[name]):
            error = relative_error(value.cpu(), expected.cpu())
            assert error < limit, (name, value, expected)
    # The running statistics move as eager's (BatchNorm's rule, a rounding apart).
    tol = {} if dtype == torch.bfloat16 else {"rtol": 1e-6, "atol": 1e-7}
    for name in ("1.running_mean", "1.running_var"):
        torch.testing.assert_close(exported[name], eager[name], **tol)


def test_exported_training_program_second_derivatives(launches):
    """A backward of the exported program with ``create_graph=True`` (a gradient penalty)
    differentiates the composite's gradient, as eager does: the same second derivatives
    of the input and parameters."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 3, 3, generator=g).to(DEVICE) + 0.5
    probe = torch.randn(3, 4, 3, 3, generator=g).to(DEVICE)
    layer = L2BatchNorm2d(4).to(DEVICE).train()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
    exported = torch.export.export(copy.deepcopy(layer), (x,)).module()

    def penalty_grads(module):
        xg = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad((module(xg) * probe).sum(), xg, create_graph=True)
        params = [xg, *module.parameters()]  # x, weight, bias (which dx does not involve)
        return torch.autograd.grad(gx.square().sum(), params, allow_unused=True)

    got, expected = penalty_grads(exported), penalty_grads(layer)
    assert got[2] is None and expected[2] is None
    for a, b in zip(got[:2], expected[:2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert launches.take().count("row_sums_kernel") == 2  # both forwards ran the kernels
