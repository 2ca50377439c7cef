"""The fast paths of ``l2bn._impl.passes`` against the generic path and the float64 reference.

Both are pure PyTorch: the fused C++ kernels are switched off here (they are compared with
these paths in ``test_paths_fused.py``).

Every path is forced on small tensors: the chunk size is shrunk so that the chunked loops
run, and the calls of each fast helper are counted so that a test fails if its path is
not taken.
"""

from __future__ import annotations

import pytest
import torch

from _reference import adversarial_input, reference_l2bn, relative_error
from l2bn import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d, backends, l2_batch_norm
from l2bn._impl import passes as _kernels

LAYOUTS = ("contiguous", "channels_last")
NAMES = ("y", "dx", "dw", "db", "running_mean", "running_var")


@pytest.fixture(autouse=True)
def pytorch_paths_only():
    with backends.flags(cpu=False):
        yield


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunk every input of more than 2 kB into pieces of about 512 bytes."""
    monkeypatch.setattr(_kernels, "_CHUNK_BYTES", 512)
    monkeypatch.setattr(_kernels, "_MIN_CHUNKED_BYTES", 2048)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # chunking is single-thread only
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def spy(monkeypatch):
    """Count the calls of the fast helpers."""
    counts: dict[str, int] = {}
    for name in ("_row_affine_bn", "_row_grad_sums_bn", "_chunked_sums", "_grad_combine_fast"):
        original = getattr(_kernels, name)

        def wrapper(*args, _name=name, _original=original, **kwargs):
            counts[_name] = counts.get(_name, 0) + 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(_kernels, name, wrapper)
    return counts


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


def _train_step(x: torch.Tensor, dy: torch.Tensor, fast: bool, layer_cls=L2BatchNorm2d):
    """Forward + backward of a fresh layer; returns y, dx, dweight, dbias, running stats."""
    torch.manual_seed(0)
    m = layer_cls(x.shape[1], dtype=x.dtype)
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-1, 1)
    xg = x.detach().clone().requires_grad_()
    with _kernels.fast_paths(fast):
        y = m(xg)
        y.backward(dy)
    return [t.detach() for t in (y, xg.grad, m.weight.grad, m.bias.grad)] + [
        m.running_mean.clone(),
        m.running_var.clone(),
    ]


def _reference_step(x: torch.Tensor, dy: torch.Tensor):
    torch.manual_seed(0)
    c = x.shape[1]
    w = torch.empty(c, dtype=torch.float64).uniform_(0.5, 1.5).requires_grad_()
    b = torch.empty(c, dtype=torch.float64).uniform_(-1, 1).requires_grad_()
    rm, rv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    xg = x.detach().double().clone().requires_grad_()
    y = reference_l2bn(xg, rm, rv, w, b, training=True)
    y.backward(dy.double())
    return [y.detach(), xg.grad, w.grad, b.grad, rm, rv]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("chunked", [False, True])
def test_fast_matches_generic_and_reference_float64(layout, chunked, request, spy):
    if chunked:
        request.getfixturevalue("small_chunks")
    g = torch.Generator().manual_seed(1)
    x = _layout(torch.randn(6, 5, 7, 9, generator=g, dtype=torch.float64) * 3 + 2, layout)
    dy = _layout(torch.randn(x.shape, generator=g, dtype=torch.float64), layout)
    fast = _train_step(x, dy, fast=True)
    counted = dict(spy)
    generic = _train_step(x, dy, fast=False)
    assert spy == counted, "the generic path must not call the fast helpers"
    reference = _reference_step(x, dy)
    for name, a, b, r in zip(NAMES, fast, generic, reference, strict=True):
        assert relative_error(a, b) < 1e-12, name
        assert relative_error(a, r) < 1e-10, name
    if layout == "contiguous":
        assert counted.get("_row_grad_sums_bn", 0) >= 1 and counted.get("_row_affine_bn", 0) >= 1
    if chunked and layout == "channels_last":
        assert counted.get("_grad_combine_fast", 0) > 1
    if chunked and layout == "channels_last":
        assert counted.get("_chunked_sums", 0) == 2  # forward and backward reductions
    assert fast[1].is_contiguous(memory_format=torch.channels_last) == (layout != "contiguous")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ["offset", "norms"])
def test_fast_float32_as_accurate_as_generic(layout, kind, small_chunks):
    x64 = _layout(adversarial_input(kind, (8, 4, 6, 6)), layout)
    dy = _layout(torch.randn(x64.shape, dtype=torch.float64), layout)
    reference = _reference_step(x64, dy)
    fast = _train_step(x64.float(), dy.float(), fast=True)
    generic = _train_step(x64.float(), dy.float(), fast=False)
    for name, a, b, r in zip(NAMES, fast, generic, reference, strict=True):
        e_fast, e_generic = relative_error(a, r), relative_error(b, r)
        assert e_fast <= max(2 * e_generic, 1e-6), (name, e_fast, e_generic)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck_on_fast_paths(layout, small_chunks):
    g = torch.Generator().manual_seed(2)
    x = _layout(torch.randn(3, 3, 4, 5, generator=g, dtype=torch.float64), layout)
    w = torch.rand(3, generator=g, dtype=torch.float64) + 0.5
    b = torch.randn(3, generator=g, dtype=torch.float64)
    args = [t.clone().requires_grad_() for t in (x, w, b)]

    def fn(x, w, b):
        return l2_batch_norm(x, None, None, w, b, training=True)

    assert torch.autograd.gradcheck(fn, args)

    def fn_eval(x, w, b):
        rm, rv = torch.zeros(3, dtype=x.dtype), torch.ones(3, dtype=x.dtype) * 1.5
        return l2_batch_norm(x, rm, rv, w, b, training=False)

    assert torch.autograd.gradcheck(fn_eval, args)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_eval_fast_matches_generic(layout, spy):
    g = torch.Generator().manual_seed(3)
    x = _layout(torch.randn(5, 4, 6, 6, generator=g), layout)
    m = L2BatchNorm2d(4).eval()
    with torch.no_grad():
        m.running_mean.uniform_(-1, 1)
        m.running_var.uniform_(0.5, 2)
        y_fast = m(x)
        with _kernels.fast_paths(False):
            y_generic = m(x)
    torch.testing.assert_close(y_fast, y_generic, rtol=1e-6, atol=1e-6)
    assert (spy.get("_row_affine_bn", 0) >= 1) == (layout == "contiguous")
    assert y_fast.is_contiguous(memory_format=torch.channels_last) == (layout != "contiguous")


@pytest.mark.parametrize(
    ("layer_cls", "shape"),
    [(L2BatchNorm1d, (12, 6)), (L2BatchNorm1d, (6, 5, 9)), (L2BatchNorm3d, (4, 3, 3, 4, 5))],
)
def test_other_ranks_fast_matches_generic(layer_cls, shape, small_chunks):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=g, dtype=torch.float64) + 1
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    fast = _train_step(x, dy, True, layer_cls)
    generic = _train_step(x, dy, False, layer_cls)
    for a, b in zip(fast, generic, strict=True):
        assert relative_error(a, b) < 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_uses_generic_path_and_float32_statistics(dtype, spy):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 4, 5, 5, generator=g)
    dy = torch.randn(x.shape, generator=g)
    low = _train_step(x.to(dtype), dy.to(dtype), fast=True)
    high = _train_step(x, dy, fast=True)
    assert not spy.get("_chunked_sums") and not spy.get("_row_grad_sums_bn", 0) > 1
    assert low[0].dtype == dtype and low[1].dtype == dtype
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-2
    for a, b in zip(low, high, strict=True):
        assert relative_error(a.float(), b) < tol


def test_expanded_gradient_and_mixed_layouts(small_chunks):
    """dy with zero strides (from ``y.sum()``) and dy in another layout than x."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(6, 4, 5, 7, generator=g, dtype=torch.float64)
    for x_in, dy in (
        (x, torch.randn(6, 1, 1, 7, generator=g, dtype=torch.float64).expand(x.shape)),
        (_layout(x, "channels_last"), torch.randn(x.shape, generator=g, dtype=torch.float64)),
        (x, _layout(torch.randn(x.shape, generator=g, dtype=torch.float64), "channels_last")),
    ):
        fast = _train_step(x_in, dy, True)
        generic = _train_step(x_in, dy, False)
        for a, b in zip(fast, generic, strict=True):
            assert relative_error(a, b) < 1e-12


def test_fast_path_distinguishes_l2bn_from_bn():
    """The fast path still l2-normalizes: scaling one sample leaves its output unchanged."""
    x = torch.randn(6, 4, 5, 5)
    x2 = x.clone()
    x2[0] *= 10
    m = L2BatchNorm2d(4)
    torch.testing.assert_close(m(x)[0], m(x2)[0], rtol=1e-4, atol=1e-5)
    bn = torch.nn.BatchNorm2d(4)
    assert not torch.allclose(bn(x)[0], bn(x2)[0], atol=1e-2)


@pytest.mark.parametrize("scale", [True, False])
def test_vector_path_for_2d_input(scale, monkeypatch):
    """(N, C) input takes the BatchNorm-kernel path; it matches the generic path and the
    reference, and passes gradcheck, also with a sample whose norm is clamped."""
    from l2bn._impl import vector_passes as _kernels_vector

    calls = []
    original = _kernels_vector.vector_forward

    def spy_forward(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(_kernels_vector, "vector_forward", spy_forward)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(10, 6, generator=g, dtype=torch.float64) + 0.5
    x[3] *= 1e-4  # norm below l2_eps below: clamped, no gradient through the norm
    w = torch.rand(6, generator=g, dtype=torch.float64) + 0.5
    b = torch.randn(6, generator=g, dtype=torch.float64)
    args = [t.clone().requires_grad_() for t in (x, w, b)]

    def fn(x, w, b):
        return l2_batch_norm(x, None, None, w, b, training=True, l2_eps=1e-3, scale=scale)

    assert torch.autograd.gradcheck(fn, args)
    assert calls
    dy = torch.randn(x.shape, generator=g, dtype=torch.float64)
    results = []
    for fast in (True, False):
        xs, ws, bs = (t.detach().clone().requires_grad_() for t in (x, w, b))
        with _kernels.fast_paths(fast):
            y = fn(xs, ws, bs)
        y.backward(dy)
        results.append([y.detach(), xs.grad, ws.grad, bs.grad])
    n_calls = len(calls)
    for a, b_ in zip(*results, strict=True):
        assert relative_error(a, b_) < 1e-12
    assert n_calls == len(calls)  # the generic run did not use the vector path
    xs = x.detach().clone().requires_grad_()
    ref = reference_l2bn(xs, None, None, w, b, training=True, l2_eps=1e-3, scale=scale)
    assert relative_error(results[0][0], ref) < 1e-10


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False])
def test_output_accepts_inplace_ops(layout, training):
    """The fast path returns a fresh tensor (not a view), so ReLU(inplace=True) works."""
    x = _layout(torch.randn(4, 3, 5, 5), layout).requires_grad_()
    m = L2BatchNorm2d(3).train(training)
    y = torch.relu_(m(x))
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        torch.relu_(m(x))
