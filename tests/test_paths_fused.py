"""The fused C++ kernels (``l2bn._C``) against the pure-PyTorch path and the float64 reference.

Each comparison also counts the calls into the CPU backend (``l2bn._impl.cpu``), so that a
test fails if the fused path was not taken (or, with it switched off, if it was).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from _reference import adversarial_input, reference_l2bn, relative_error
from l2bn import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d, backends, l2_batch_norm
from l2bn._impl import cpu as _fused

needs_fused = pytest.mark.skipif(
    not backends.available("cpu"), reason=str(backends.unavailable_reason("cpu"))
)

LAYER = {2: L2BatchNorm1d, 3: L2BatchNorm1d, 4: L2BatchNorm2d, 5: L2BatchNorm3d}
NAMES = ("y", "dx", "dweight", "dbias", "running_mean", "running_var", "eval y")


def _arrange(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        return x.contiguous(memory_format=fmt)
    if layout == "strided":  # neither layout: the kernels copy it first
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    return x.contiguous()


# (shape, layout): every layout the kernels take, and one they copy.
CASES = [
    ((6, 5, 7, 9), "contiguous"),
    ((6, 5, 7, 9), "channels_last"),
    ((6, 5, 7, 9), "strided"),
    ((4, 3, 3, 4, 5), "contiguous"),
    ((4, 3, 3, 4, 5), "channels_last"),
    ((6, 5, 11), "contiguous"),
    ((12, 7), "contiguous"),
    ((9, 6, 1, 1), "contiguous"),
    ((1, 4, 5, 5), "contiguous"),  # one sample: fewer samples than threads
    # Channel-last small maps (at most 16 positions: rows of C values, as (N, C) input),
    # the largest of them, and the smallest map past them (row moments again).
    ((6, 5, 2, 2), "channels_last"),
    ((5, 6, 4, 4), "channels_last"),
    ((4, 3, 2, 2, 2), "channels_last"),
    ((6, 5, 3, 6), "channels_last"),
]


@pytest.fixture
def calls(monkeypatch):
    """Count the calls of the fused training and eval operators."""
    counts = {"train": 0, "evaluate": 0}
    # Eager training runs l2bn::train (autograd in C++), through its entry point unless
    # __torch_function__ must see it; compiled graphs train_forward.
    attributes = (
        ("train", "_train"),
        ("train", "_train_entry"),
        ("train", "_train_forward"),
        ("evaluate", "_eval_forward"),
        ("evaluate", "_eval_entry"),
    )
    for name, attribute in attributes:
        original = getattr(_fused, attribute)

        def wrapper(*args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(_fused, attribute, wrapper)
    return counts


def _step(x, dy, *, fused, affine=True, scale=True, momentum=0.1):
    """Training forward + backward, then an eval forward under no_grad, of a fresh layer."""
    torch.manual_seed(0)
    layer = LAYER[x.dim()](x.shape[1], affine=affine, scale=scale, momentum=momentum)
    layer = layer.to(x.dtype)
    if affine:
        c = x.shape[1]
        with torch.no_grad():  # the reference's values, drawn in float64
            layer.weight.copy_(torch.empty(c, dtype=torch.float64).uniform_(0.5, 1.5))
            layer.bias.copy_(torch.empty(c, dtype=torch.float64).uniform_(-1, 1))
    xg = x.detach().clone().requires_grad_()
    with backends.flags(cpu=fused):
        y = layer(xg)
        y.backward(dy)
        layer.eval()
        with torch.no_grad():
            y_eval = layer(x)
    grads = (layer.weight.grad, layer.bias.grad) if affine else (None, None)
    out = [y, xg.grad, *grads, layer.running_mean, layer.running_var, y_eval]
    return [None if t is None else t.detach().clone() for t in out]


def _reference_step(x, dy, *, affine=True, scale=True):
    torch.manual_seed(0)
    c = x.shape[1]
    w = b = None
    if affine:
        w = torch.empty(c, dtype=torch.float64).uniform_(0.5, 1.5).requires_grad_()
        b = torch.empty(c, dtype=torch.float64).uniform_(-1, 1).requires_grad_()
    rm, rv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    xg = x.detach().double().clone().requires_grad_()
    y = reference_l2bn(xg, rm, rv, w, b, training=True, scale=scale)
    y.backward(dy.double())
    with torch.no_grad():
        y_eval = reference_l2bn(x.double(), rm, rv, w, b, training=False, scale=scale)
    grads = (w.grad, b.grad) if affine else (None, None)
    return [y.detach(), xg.grad, *grads, rm, rv, y_eval]


def _compare(x, dy, calls, tol_paths, tol_reference, **kw):
    fused = _step(x, dy, fused=True, **kw)
    assert calls == {"train": 1, "evaluate": 1}, "the fused path was not taken"
    pytorch = _step(x, dy, fused=False, **kw)
    assert calls == {"train": 1, "evaluate": 1}, "the PyTorch path called the fused kernels"
    reference = _reference_step(x, dy, **kw)
    for name, a, b, r in zip(NAMES, fused, pytorch, reference, strict=True):
        if r is None:
            assert a is None and b is None, name
            continue
        assert a.dtype == x.dtype and a.shape == r.shape, name
        assert relative_error(a, b) < tol_paths, name
        assert relative_error(a, r) < tol_reference, name
    return fused


@needs_fused
@pytest.mark.parametrize("shape,layout", CASES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("scale", [True, False])
def test_fused_matches_pytorch_and_reference_float64(shape, layout, affine, scale, calls):
    g = torch.Generator().manual_seed(1)
    x = _arrange(torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 2, layout)
    dy = _arrange(torch.randn(shape, generator=g, dtype=torch.float64), layout)
    fused = _compare(x, dy, calls, 1e-12, 1e-10, affine=affine, scale=scale)
    if layout == "channels_last":
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        assert fused[0].is_contiguous(memory_format=fmt)
        assert fused[1].is_contiguous(memory_format=fmt)


@needs_fused
@pytest.mark.parametrize("shape,layout", CASES)
def test_fused_matches_pytorch_float32(shape, layout, calls):
    g = torch.Generator().manual_seed(2)
    x = _arrange(torch.randn(shape, generator=g) * 3 + 2, layout)
    dy = _arrange(torch.randn(shape, generator=g), layout)
    _compare(x, dy, calls, 1e-5, 1e-5)


@needs_fused
@pytest.mark.parametrize("kind", ["offset", "norms"])
@pytest.mark.parametrize("shape,layout", [CASES[0], CASES[1], CASES[6]])
def test_fused_adversarial_inputs(kind, shape, layout, calls):
    """Channel offsets of 1e3 (one-pass variances would cancel) and norms 1e6 apart."""
    x64 = _arrange(adversarial_input(kind, shape), layout)
    dy = _arrange(torch.randn(shape, generator=torch.Generator().manual_seed(3)), layout)
    _compare(x64, dy.double(), calls, 1e-10, 1e-10)
    calls.update(train=0, evaluate=0)
    reference = _reference_step(x64, dy.double())
    fused = _step(x64.float(), dy, fused=True)
    pytorch = _step(x64.float(), dy, fused=False)
    for name, a, b, r in zip(NAMES, fused, pytorch, reference, strict=True):
        e_fused, e_pytorch = relative_error(a, r), relative_error(b, r)
        assert e_fused <= max(2 * e_pytorch, 1e-5), (name, e_fused, e_pytorch)


@needs_fused
@pytest.mark.parametrize("shape,layout", [CASES[0], CASES[1], CASES[6]])
def test_fused_centred_recompute_of_constant_rows(shape, layout):
    """Rows (or (N, C) channels) with a huge mean and tiny spread take the centred pass."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 1e-4 + 1e3
    x[0] = torch.randn(shape[1:], generator=g, dtype=torch.float64)  # one ordinary sample
    x = _arrange(x, layout)
    out = l2_batch_norm(x, None, None, training=True)
    reference = reference_l2bn(x, None, None, training=True)
    assert relative_error(out, reference) < 1e-8


@needs_fused
@pytest.mark.parametrize("shape", [(5, 4, 3, 3), (8, 6)])
def test_fused_zero_and_nan_samples(shape):
    """A zero sample (norm clamped by l2_eps) is finite; a NaN sample poisons the batch
    statistics, hence every output, as in BatchNorm; both paths agree."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x[1] = 0
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    outs = []
    for fused in (True, False):
        xg = x.clone().requires_grad_()
        with backends.flags(cpu=fused):
            y = l2_batch_norm(xg, None, None, training=True)
            y.backward(dy)
        assert torch.isfinite(y).all() and torch.isfinite(xg.grad).all()
        outs.append((y.detach(), xg.grad))
    assert relative_error(outs[0][0], outs[1][0]) < 1e-12
    assert relative_error(outs[0][1], outs[1][1]) < 1e-10
    x[2].view(-1)[0] = float("nan")
    with backends.flags(cpu=True):
        y = l2_batch_norm(x, None, None, training=True)
        y_eval = l2_batch_norm(x, torch.zeros(shape[1]).double(), torch.ones(shape[1]).double())
    assert torch.isnan(y).all()
    assert torch.isnan(y_eval[2]).all() and torch.isfinite(y_eval[[0, 1, 3]]).all()


@needs_fused
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fused_gradcheck(layout):
    g = torch.Generator().manual_seed(5)
    for shape in ((3, 3, 4, 5), (6, 4), (3, 3, 2, 2)):
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        x = _arrange(x, layout) if x.dim() == 4 else x
        w = torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5
        b = torch.randn(shape[1], generator=g, dtype=torch.float64)
        args = [t.clone().requires_grad_() for t in (x, w, b)]
        for scale in (True, False):

            def fn(x, w, b, scale=scale):
                return l2_batch_norm(x, None, None, w, b, training=True, scale=scale)

            with backends.flags(cpu=True):
                assert torch.autograd.gradcheck(fn, args)


@needs_fused
@pytest.mark.parametrize("grads", ["x", "weight", "bias", "x,bias", "weight,bias", "x,weight,bias"])
@pytest.mark.parametrize("given", ["weight,bias", "weight", "bias"])
def test_train_operator_gradients_for_each_argument_subset(grads, given, calls):
    """l2bn::train's C++ autograd kernel maps its autograd edges to the arguments given
    (the weight and bias are optional) and asks only for the gradients wanted, in its
    fused backward and in the differentiable one of create_graph=True (gradgradcheck):
    both against the composite's gradients."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 3, 3, 2, generator=g, dtype=torch.float64) * 2 + 0.5
    w = torch.rand(3, generator=g, dtype=torch.float64) + 0.5
    b = torch.randn(3, generator=g, dtype=torch.float64)
    args = {"x": x, "weight": w if "weight" in given else None}
    args["bias"] = b if "bias" in given else None
    wanted = [k for k in grads.split(",") if args[k] is not None]
    if not wanted:
        pytest.skip("no gradient wanted of the arguments given")
    for key in wanted:
        args[key] = args[key].clone().requires_grad_()
    inputs = [args[k] for k in wanted]

    def fn(*tensors):
        call = dict(args, **dict(zip(wanted, tensors, strict=True)))
        return l2_batch_norm(call["x"], None, None, call["weight"], call["bias"], True)

    dy = torch.randn(x.shape, generator=g, dtype=torch.float64)
    found = {}
    for fused in (True, False):
        with backends.flags(cpu=fused), backends.prefer(None if fused else "composite"):
            found[fused] = torch.autograd.grad(fn(*inputs), inputs, dy)
    assert calls["train"] == 1, "the fused operator did not run"
    for ours, reference in zip(found[True], found[False], strict=True):
        assert relative_error(ours, reference) < 1e-10
    with backends.flags(cpu=True):
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)


@needs_fused
@pytest.mark.parametrize("weight_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (64, 3)])
def test_bias_gradient_in_its_own_dtype_beside_a_narrower_weight(weight_dtype, shape, calls):
    """A float32 bias beside a float16 or bfloat16 weight (mixed parameter dtypes are
    accepted): the bias gradient is the sum of ``dy`` in float32, not one rounded to the
    weight's dtype first (float16 overflowed to inf past 65504, bfloat16 lost bits)."""
    g = torch.Generator().manual_seed(15)
    x = torch.randn(shape, generator=g) * 2 + 0.5
    dy = torch.randn(shape, generator=g) + 3.0
    dy[:, 2] = 1300.0  # channel 2: a sum past float16's largest value
    w = (torch.rand(3, generator=g) + 0.5).to(weight_dtype).requires_grad_()
    b = torch.zeros(3).requires_grad_()
    xg = x.clone().requires_grad_()
    l2_batch_norm(xg, None, None, w, b, training=True).backward(dy)
    assert calls["train"] == 1, "the fused operator did not run"
    assert b.grad.dtype == torch.float32 and w.grad.dtype == weight_dtype
    expected = dy.double().sum([d for d in range(x.dim()) if d != 1])
    assert relative_error(b.grad, expected) < 1e-6, (b.grad, expected)


@needs_fused
def test_fused_grad_output_in_other_layouts(calls):
    """autograd may hand back dy expanded or in another memory format."""
    x = torch.randn(4, 3, 5, 6).contiguous(memory_format=torch.channels_last)
    grads = []
    for fused in (True, False):
        xg = x.clone().requires_grad_()
        layer = L2BatchNorm2d(3)
        with backends.flags(cpu=fused):
            (layer(xg) * torch.arange(6.0)).sum().backward()  # dy contiguous, expanded rows
        grads.append(xg.grad)
    assert calls["train"] == 1
    assert relative_error(grads[0], grads[1]) < 1e-5


@needs_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sample", [(8, 64, 80), (8, 4, 4)])
def test_fused_eval_one_sample_matches_across_thread_counts_and_batch_sizes(sample, dtype):
    """Eval with fewer samples than threads takes another loop (the norms one sample per
    task, the output spread over threads). A sample's output is the same bits at 1 and 2
    threads and alone or in a batch that takes the main loop: samples of 40960 values
    (more than one parallel grain, which a split of the norm over threads would sum in
    pieces that depend on the thread count; the main loop pipelines or takes two passes)
    and of 128 values (two passes, the sample in L1)."""
    g = torch.Generator().manual_seed(5)
    # Several batches: a different order of the sum shows in the output's last bits for
    # some inputs only.
    batch = torch.randn(8, 4, *sample, generator=g, dtype=dtype) * 2 + 0.5
    c = sample[0]
    rm, rv = torch.randn(c, generator=g).to(dtype), (torch.rand(c, generator=g) + 0.5).to(dtype)
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with backends.flags(cpu=True):
                outs.append([l2_batch_norm(b[:1], rm, rv, training=False) for b in batch])
                outs.append([l2_batch_norm(b, rm, rv, training=False)[:1] for b in batch])
    finally:
        torch.set_num_threads(threads)
    for out in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(out, outs[0], strict=True))
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    for b, out in zip(batch, outs[0], strict=True):
        assert relative_error(out, reference_l2bn(b[:1], rm, rv, training=False)) < tolerance


def _assert_eval_same_at_one_and_two_threads(x: torch.Tensor, g: torch.Generator) -> None:
    """Fused eval of ``x`` (running statistics, weight and bias drawn from ``g``) gives the
    same bits at 1 and 2 threads, and the float64 reference's values."""
    c, dtype = x.shape[1], x.dtype
    rm, rv = torch.randn(c, generator=g).double(), torch.rand(c, generator=g).double() + 0.5
    w, b = torch.rand(c, generator=g).double() + 0.5, torch.randn(c, generator=g).double()
    rm, rv, w, b = (t.to(dtype) for t in (rm, rv, w, b))
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with backends.flags(cpu=True):
                outs.append(l2_batch_norm(x, rm, rv, w, b, training=False))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    assert relative_error(outs[0], reference_l2bn(x, rm, rv, w, b)) < tolerance


@needs_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize(
    "shape",
    [
        (4, 16, 32, 32),
        (5, 70, 15, 17),
        (4, 3, 100, 110),
        (24, 300, 4, 4),
        (12, 100, 7, 7),
        (24, 3, 40, 41),
        (300, 16, 4, 4),
        (300, 3, 9, 10),
    ],
)
def test_fused_eval_is_the_same_at_every_thread_count(shape, layout, dtype):
    """The pipelined eval loop sums each sample's squares while writing the previous
    sample's output, except for the first sample of a thread's range: both sums must take
    the same order, so that the output does not depend on how the batch was split
    (bitwise: a different order of the sum shows in the last bits). Two threads split the
    batch. Samples of over 16k values (pipelined, or two passes for large row-wise ones);
    samples of 4800, 4900 and 4920 values, pipelined (over 16 kB) with rows of 16 values,
    shorter than one step of the sum, rows of 49 values, one step and a tail, and three
    channels, whose channel-last output units group positions, the last group short; 300
    small samples (two passes, each sample in L1)."""
    g = torch.Generator().manual_seed(8)
    x = _arrange(torch.randn(shape, generator=g, dtype=dtype) * 3 + 1, layout)
    _assert_eval_same_at_one_and_two_threads(x, g)


@needs_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(600, 40), (1000, 7), (40, 300)])
def test_fused_eval_of_rows_is_the_same_at_every_thread_count(shape, dtype):
    """(N, C) eval: rows of at most 1 kB in tiles (the norms of a tile's rows, then its
    output; 600 x 40 and 1000 x 7 take several tiles, split differently by two threads),
    longer rows one after the other, each written in the loop that sums the next one's
    squares (40 x 300: 1.2 and 2.4 kB). The same bits at 1 and 2 threads, and the float64
    reference's values."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(shape, generator=g, dtype=dtype) * 3 + 1
    _assert_eval_same_at_one_and_two_threads(x, g)


@needs_fused
def test_fused_cumulative_running_average():
    """momentum=None: the running statistics are the running mean of the batch statistics."""
    g = torch.Generator().manual_seed(6)
    batches = [torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    stats = []
    for fused in (True, False):
        layer = L2BatchNorm2d(3, momentum=None).double()
        with backends.flags(cpu=fused), torch.no_grad():
            for x in batches:
                layer(x)
        stats.append((layer.running_mean.clone(), layer.running_var.clone()))
    assert relative_error(stats[0][0], stats[1][0]) < 1e-12
    assert relative_error(stats[0][1], stats[1][1]) < 1e-12


@needs_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("momentum", [1.0, None])
def test_fused_running_variance_exact_at_full_momentum(momentum, dtype, calls):
    """A batch weight of 1 (momentum=1.0, or momentum=None on the first batch) makes the
    running statistics the batch's own: ``1 + (v - 1)`` lost the digits of a batch variance
    far below the old value of 1 (1e-8 here: 1e-8 relative error in float64)."""
    g = torch.Generator().manual_seed(9)
    x = 1 + 1e-4 * torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    layer = L2BatchNorm1d(3, momentum=momentum).to(dtype)
    with torch.no_grad():
        layer(x.to(dtype))
    assert calls["train"] == 1
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    reference_l2bn(x.to(dtype).double(), rm, rv, training=True, momentum=1.0)
    tol = 1e-10 if dtype == torch.float64 else 1e-6
    assert relative_error(layer.running_mean, rm) < tol
    assert relative_error(layer.running_var, rv) < tol


@needs_fused
@pytest.mark.parametrize(
    "shape,layout,row_moments",
    [
        ((16, 8, 6, 6), "contiguous", True),
        ((16, 8, 6, 6), "channels_last", True),
        ((16, 8, 4, 4), "contiguous", True),
        ((16, 8, 4, 4), "channels_last", False),  # a small map: rows of C values
        ((16, 8, 2, 2), "channels_last", False),
        ((64, 32), "contiguous", False),
    ],
)
def test_fused_saves_input_and_per_sample_statistics_only(shape, layout, row_moments):
    """Bytes saved for backward: x (as BatchNorm) plus O(N) and O(C) statistics, and the
    (N, C) row moments of x only where the kernels keep them (not for (N, C) input nor
    for channel-last maps of at most 16 positions, where they would be a quarter to an
    eighth of x each)."""
    x = _arrange(torch.randn(shape), layout).requires_grad_()
    _, _, _, x_mean, x_var, _, _ = torch.ops.l2bn.train_forward(
        x.detach(), None, None, None, None, 0.1, 1e-5, 1e-12, True
    )
    n, c = shape[0], shape[1]
    expected = (n, c) if row_moments else (0,)
    assert x_mean.shape == expected and x_var.shape == expected
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    layer = L2BatchNorm1d(shape[1]) if len(shape) == 2 else L2BatchNorm2d(shape[1])
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    per_row_stats = 2 * n * c * 8 if row_moments else 0  # row mean and variance of x
    budget = x.numel() * 4 + c * 4 + per_row_stats + n * 9 + 2 * c * 8
    assert sum(saved.values()) <= budget


@needs_fused
def test_fused_operators_reject_bad_input_with_clear_errors():
    x = torch.randn(4, 3, 5, 5)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.l2bn.train_forward(x.int(), None, None, None, None, 0.1, 1e-5, 1e-12, True)
    with pytest.raises(RuntimeError, match="non-empty"):
        torch.ops.l2bn.eval_forward(x[:0], x[0, :, 0, 0], x[0, :, 0, 0], None, None, 0, 0, True)
    with pytest.raises(RuntimeError, match="3 per-channel values"):
        torch.ops.l2bn.train_forward(x, torch.ones(4), None, None, None, 0.1, 1e-5, 1e-12, True)
    # The row moments must be train_forward's: (N, C) where it keeps them, else empty.
    ops = torch.ops.l2bn
    _, rho, active, x_mean, x_var, mean, invstd = ops.train_forward(
        x, None, None, None, None, 0.1, 1e-5, 1e-12, True
    )
    with pytest.raises(RuntimeError, match=r"x_mean and x_var of shape \(N, C\)"):
        ops.train_backward(x, x, None, rho, active, None, None, mean, invstd, True, True)
    small = torch.randn(4, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    _, rho, active, _, _, mean, invstd = ops.train_forward(
        small, None, None, None, None, 0.1, 1e-5, 1e-12, True
    )
    with pytest.raises(RuntimeError, match="x_mean and x_var must be empty"):
        ops.train_backward(
            small, small, None, rho, active, x_mean[:4], x_var[:4], mean, invstd, True, True
        )


@needs_fused
def test_pytorch_path_taken_for_what_the_kernels_do_not_take(calls):
    """Half precision and torch.compile-style tracing fall back to the PyTorch path."""
    with torch.no_grad():
        L2BatchNorm2d(3).to(torch.bfloat16)(torch.randn(4, 3, 5, 5, dtype=torch.bfloat16))
    assert calls == {"train": 0, "evaluate": 0}


def test_fused_kernels_built_when_required():
    """`make test` sets L2BN_REQUIRE_FUSED=1: the install step must have built l2bn._C."""
    if os.environ.get("L2BN_REQUIRE_FUSED") != "1":
        pytest.skip("set L2BN_REQUIRE_FUSED=1 to require the fused kernels")
    assert backends.available("cpu"), backends.unavailable_reason("cpu")


def test_disabling_the_extension_falls_back_to_pytorch():
    code = (
        "import torch, l2bn; "
        "x = torch.randn(4, 3, 5, 5, requires_grad=True); "
        "l2bn.L2BatchNorm2d(3)(x).sum().backward(); "
        "print(l2bn.backends.available('cpu'), l2bn.backends.unavailable_reason('cpu')); "
        "print(l2bn.backends.status('cpu'))"
    )
    env = dict(os.environ, L2BN_DISABLE_FUSED="1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("False switched off by L2BN_DISABLE_FUSED")
    assert "cpu float32: training -> pytorch, eval -> pytorch" in out.stdout


def test_missing_extension_is_reported(monkeypatch):
    """An install without the compiled module says so (and L2BN runs the PyTorch path)."""
    import importlib.util

    monkeypatch.delenv("L2BN_DISABLE_FUSED", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert _fused._load() == "l2bn._C was not built (README: Set-up)"


@needs_fused
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (4, 3, 2, 2), (4, 20, 9, 9)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("position", [0, -1])
@pytest.mark.parametrize("value", [float("inf"), -float("inf")])
def test_fused_float32_infinite_input_spoils_one_channel(shape, layout, position, value, calls):
    """One +-inf in float32 input (among the first positions of its row, which set the
    channel-last float sums' shift, or the last): as eq. 3, that sample's norm is
    infinite, so only that channel's output and statistics are NaN (the channel-last
    moments made the whole sample's norm NaN, and so every channel)."""
    torch.manual_seed(0)
    x64 = torch.randn(shape, dtype=torch.float64)
    x64[1, 0].view(-1)[position] = value
    x = _arrange(x64.float(), layout)
    layer = L2BatchNorm2d(shape[1])
    rm, rv = torch.zeros(shape[1], dtype=torch.float64), torch.ones(shape[1], dtype=torch.float64)
    y_ref = reference_l2bn(x64, rm, rv, training=True)
    y_ref_eval = reference_l2bn(x64, rm, rv, training=False)
    with backends.flags(cpu=True), torch.no_grad():
        y = layer(x)
        y_eval = layer.eval()(x)
    assert calls == {"train": 1, "evaluate": 1}
    nan_channels = torch.isnan(y).flatten(2).any(2).any(0)
    assert nan_channels.tolist() == [True] + [False] * (shape[1] - 1)
    for ours, ref in ((y, y_ref), (layer.running_mean, rm), (layer.running_var, rv)):
        torch.testing.assert_close(ours.double(), ref, equal_nan=True, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_eval.double(), y_ref_eval, equal_nan=True, rtol=1e-5, atol=1e-5)


@needs_fused
@pytest.mark.parametrize("shape", [(40, 32), (37, 16), (12, 1100)])
@pytest.mark.parametrize("position", [0, -1])
@pytest.mark.parametrize("value", [float("inf"), -float("inf"), 0.0])
def test_fused_float32_rows_with_an_infinite_or_zero_sample(shape, position, value):
    """(N, C) float32 input, whose norms, scales and inverse scales are taken a tile of rows
    at a time: a row with one +-inf has an infinite norm (only that channel's output and
    statistics are NaN, as eq. 3), a row of zeros is clamped by l2_eps (finite), in
    training, eval and the backward, against the float64 reference."""
    torch.manual_seed(0)
    x64 = torch.randn(shape, dtype=torch.float64)
    if value == 0.0:
        x64[3] = 0.0
    else:
        x64[3, position] = value
    x = x64.float().requires_grad_()
    layer = L2BatchNorm1d(shape[1])
    rm, rv = torch.zeros(shape[1], dtype=torch.float64), torch.ones(shape[1], dtype=torch.float64)
    y_ref = reference_l2bn(x64, rm, rv, training=True)
    y_ref_eval = reference_l2bn(x64, rm, rv, training=False)
    with backends.flags(cpu=True, pytorch=False):
        y = layer(x)
        y.sum().backward()
        with torch.no_grad():
            y_eval = layer.eval()(x)
    nan_channels = torch.isnan(y).any(0)
    expected = torch.zeros(shape[1], dtype=torch.bool)
    if value != 0.0:
        expected[position] = True
    assert nan_channels.tolist() == expected.tolist()
    for ours, ref in ((y, y_ref), (layer.running_mean, rm), (layer.running_var, rv)):
        torch.testing.assert_close(ours.double(), ref, equal_nan=True, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_eval.double(), y_ref_eval, equal_nan=True, rtol=1e-5, atol=1e-5)
    if value == 0.0:
        assert torch.isfinite(x.grad).all()


# Each layout the kernels take: row-wise maps (small samples, and samples past the eval's
# two-pass size), channel-last maps, channel-last small maps (rows of C), (N, C) rows short
# and long, and fewer samples than threads.
MAGNITUDE_CASES = [
    ((8, 4, 6, 6), "contiguous"),
    ((2, 64, 32, 32), "contiguous"),
    ((8, 4, 6, 6), "channels_last"),
    ((4, 16, 2, 2), "channels_last"),
    ((16, 32), "contiguous"),
    ((8, 512), "contiguous"),
    ((1, 4, 6, 6), "contiguous"),
]


@needs_fused
@pytest.mark.parametrize("magnitude", [1e19, 1e20, 1e22, 1e25, 1e30, 1e35, 1e-20])
@pytest.mark.parametrize(("shape", "layout"), MAGNITUDE_CASES)
def test_extreme_magnitudes_match_the_reference(shape, layout, magnitude, calls):
    """Float32 values past about 1e19 overflow a float lane's sum of squares: the norms of
    such samples are summed again in double, in training (forward and backward) and eval."""
    g = torch.Generator().manual_seed(0)
    x = _arrange(torch.randn(shape, generator=g) * magnitude, layout)
    dy = torch.randn(shape, generator=g)
    layer = LAYER[len(shape)](shape[1])
    xg = x.clone().requires_grad_()
    if shape[0] > 1:
        y = layer(xg)
        y.backward(dy)
        x64 = x.double().requires_grad_()
        ref = reference_l2bn(x64, None, None, training=True)
        ref.backward(dy.double())
        assert relative_error(y, ref) < 1e-5
        assert relative_error(xg.grad, x64.grad) < 1e-4
    layer.eval()
    with torch.no_grad():
        y_eval = layer(x)
    rm, rv = layer.running_mean.double(), layer.running_var.double()
    assert relative_error(y_eval, reference_l2bn(x.double(), rm, rv)) < 1e-5
    assert calls["evaluate"] == 1


@needs_fused
@pytest.mark.parametrize("magnitude", [1e-20, 1e-22, 1e-25, 1e-30])
@pytest.mark.parametrize(("shape", "layout"), MAGNITUDE_CASES)
def test_tiny_magnitudes_match_the_reference_without_l2_eps(shape, layout, magnitude, calls):
    """Float32 values below about 1e-19 square below float's smallest normal (below about
    2.6e-23, to zero): a float lane's sum of squares loses them, and with ``l2_eps=0``
    nothing clamps such a norm (before: eval outputs 1.8x off at 1e-25). Such samples are
    summed again in double: outputs and running statistics, training and eval, for one
    tiny sample among ordinary ones. (The backward: see the next test.)"""
    g = torch.Generator().manual_seed(0)
    scales = torch.ones(shape[0], dtype=torch.float64)
    scales[0] = magnitude
    view = (-1,) + (1,) * (len(shape) - 1)
    x = _arrange(
        (torch.randn(shape, generator=g, dtype=torch.float64) * scales.view(view)).float(), layout
    )
    layer = LAYER[len(shape)](shape[1], l2_eps=0.0)
    rm, rv = layer.running_mean.double(), layer.running_var.double()
    with torch.no_grad():
        if shape[0] > 1:
            y = layer(x)
            ref = reference_l2bn(x.double(), rm, rv, training=True, l2_eps=0.0)
            assert relative_error(y, ref) < 1e-5
            assert relative_error(layer.running_mean, rm) < 1e-5
            assert relative_error(layer.running_var, rv) < 1e-5
            assert calls["train"] == 1
        layer.eval()
        y_eval = layer(x)
    ref_eval = reference_l2bn(x.double(), rm, rv, l2_eps=0.0)
    assert relative_error(y_eval, ref_eval) < 1e-5
    assert calls["evaluate"] == 1


# (N, C), (N, C, L), (N, C, H, W) contiguous and channels_last: the vector, contiguous and
# channel-last backward kernels.
TINY_NORM_CASES = {
    "nc": ((6, 40), None),
    "ncl": ((6, 5, 7), None),
    "nchw": ((6, 5, 4, 3), None),
    "nhwc": ((6, 16, 4, 3), torch.channels_last),
}


@needs_fused
@pytest.mark.parametrize("case", list(TINY_NORM_CASES))
@pytest.mark.parametrize("scale", [1e-20, 1e-30])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "pytorch"])
def test_tiny_norm_input_gradient_without_l2_eps(fused, scale, case):
    # With l2_eps=0 a float32 sample of norm below about 1e-19 had 1 / rho^2 overflow
    # float32 in the backward's coefficients: an infinite input gradient where the true one
    # (about 2.4e20 at 1e-20) is finite.
    shape, layout = TINY_NORM_CASES[case]
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(shape, generator=g, dtype=torch.float64) + 0.5
    x64[1] *= scale
    dy = torch.randn(x64.shape, generator=g)
    x = x64.float()
    if layout is not None:
        x, dy = x.contiguous(memory_format=layout), dy.contiguous(memory_format=layout)
    x.requires_grad_()
    with backends.flags(cpu=fused):
        l2_batch_norm(x, None, None, training=True, l2_eps=0.0).backward(dy)
    xr = x.detach().double().requires_grad_()
    reference_l2bn(xr, None, None, training=True, l2_eps=0.0).backward(dy.double())
    assert torch.isfinite(x.grad).all()
    assert relative_error(x.grad, xr.grad) < 1e-4
