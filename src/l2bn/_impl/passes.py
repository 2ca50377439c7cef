"""The full-size passes of L2BN, chosen per device, layout and dtype.

Everything else L2BN computes is ``O(N * C)``; these four passes are what costs time:

* ``input_sums``: per ``(n, c)`` sum and sum of squares of ``x`` (forward reduction);
* ``grad_sums``: per ``(n, c)`` sums of ``dy`` and ``dy * (x - shift)`` (backward reduction);
* ``scale_shift``: ``a[n, c] * x + b[c]`` (forward and eval output, eq. 2-3);
* ``grad_combine``: ``p[n, c] * dy + q[n, c] * x + r[n, c]`` (input gradient).

Two implementations of each, selected by :func:`fast_paths`:

* the *generic* path: plain tensor ops, correct on every device, layout and dtype, and the
  one traced by ``torch.compile`` / ``torch.export``. It creates no full-size tensor in the
  accumulation dtype: reductions take ``dtype=``, and elementwise passes that mix ``x``'s
  dtype with float32 (float64) coefficients write ``out=`` a tensor of ``x``'s dtype
  (TensorIterator computes in the promoted dtype and rounds on store; on CPU it converts
  inside the kernel). ``grad_sums`` fills one buffer shaped like ``x`` with
  ``(x - shift) * dy`` (rounded to ``x``'s dtype), which ``grad_combine`` then overwrites with
  the input gradient. On CPU tensors of a narrower dtype than the statistics (half
  precision; float32 with the fast paths off) the two backward passes compute in the
  accumulation dtype instead (see ``_widened_on_cpu``). :func:`accelerator_paths` makes CPU
  tensors take the path of other devices, with their statistics dtype, so that tests run
  it here;
* the *fast* path (CPU, float32/float64): it allocates no full-size temporary besides the
  output (on a 2-core test machine a fresh 50 MB tensor cost more in page faults than a
  pass over it): inputs reuse the buffer of the products ``x * x`` or ``dy * x`` as the
  output; with one thread, large inputs are processed a chunk of samples at a time with a
  small scratch buffer, so that the second op on a chunk finds it in cache. It picks a reduction
  that is vectorised for the layout at hand, and writes row-wise affine maps of contiguous
  input with BatchNorm's own eval kernel on an ``(1, N * C, M)`` view (``eps = 0``, mean 0,
  variance 1: the kernel then computes exactly ``a * x + b``); the backward sums of
  contiguous input come from BatchNorm's backward reduction on the same view, which reads
  ``dy`` and ``x`` once.

Both paths give the same results up to float rounding; ``tests/test_paths_*.py`` checks it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from l2bn._impl.transforms import compiling

# Below this many positions per (n, c) row, a row-wise BatchNorm call costs more per row
# than the broadcasting addcmul it replaces.
_MIN_ROW_LENGTH = 8

# Large inputs are processed in chunks of whole samples of about this many bytes: eager
# PyTorch cannot fuse two ops, but it can keep the operands of the second one in cache.
_CHUNK_BYTES = 1 << 20
_MIN_CHUNKED_BYTES = 4 * _CHUNK_BYTES

_state = {"fast": True, "accelerator": False}


@contextlib.contextmanager
def fast_paths(enabled: bool) -> Iterator[None]:
    """Enable or disable the fast paths inside a ``with`` block (tests compare both)."""
    previous = _state["fast"]
    _state["fast"] = bool(enabled)
    try:
        yield
    finally:
        _state["fast"] = previous


def fast_paths_enabled() -> bool:
    """True when the fast paths are switched on (the default)."""
    return _state["fast"]


@contextlib.contextmanager
def accelerator_paths(enabled: bool = True) -> Iterator[None]:
    """Inside the block, CPU tensors take the path of every other device (tests).

    No fast path, and float32 statistics for float32 input (on CPU they are float64
    otherwise): the numerics of the PyTorch backend on a GPU, which this switch lets the
    CPU-only test suite check against the float64 reference.
    """
    previous = _state["accelerator"]
    _state["accelerator"] = bool(enabled)
    try:
        yield
    finally:
        _state["accelerator"] = previous


def accelerator_paths_enabled() -> bool:
    """True inside :func:`accelerator_paths`."""
    return _state["accelerator"]


def accumulation_dtype(x: Tensor) -> torch.dtype:
    """The dtype of the statistics of ``x``: float64 for float64 input and for float32 input
    on CPU (where it costs little, as in the fused kernels; with channel offsets of 1e3,
    float32 statistics lose the weight gradient's accuracy), float32 otherwise (half and
    bfloat16 inputs accumulate in float32, as BatchNorm does; float32 input on other
    devices, and on CPU inside :func:`accelerator_paths`)."""
    if x.dtype == torch.float64:
        return torch.float64
    if x.dtype == torch.float32 and x.device.type == "cpu" and not _state["accelerator"]:
        return torch.float64
    return torch.float32


def _fast(*tensors: Tensor) -> bool:
    """Whether the fast path applies: CPU, full-precision dtype, eager mode."""
    if not _state["fast"] or _state["accelerator"] or compiling():
        return False
    if any(t.numel() == 0 for t in tensors):
        return False  # empty batches (e.g. a rank with no samples) take the generic path
    return all(
        t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors
    ) and (len({t.dtype for t in tensors}) == 1)


def fast_applies(*tensors: Tensor | None) -> bool:
    """Whether the fast paths apply to these tensors (None entries are ignored)."""
    return _fast(*(t for t in tensors if t is not None))


def rows(x: Tensor) -> Tensor:
    """``x`` of shape ``(N, C, *S)`` as ``(N, C, M)`` (a view for contiguous and channels_last)."""
    # prod(S) rather than -1: a reshape cannot infer -1 for an empty batch.
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


def coeff_shape(x: Tensor) -> tuple[int, ...]:
    """Shape of a per-``(n, c)`` coefficient broadcast against ``x``."""
    return (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)


def channel_shape(x: Tensor) -> tuple[int, ...]:
    """Shape of a per-channel coefficient broadcast against ``x``."""
    return (x.shape[1],) + (1,) * (x.dim() - 2)


def _widened_on_cpu(x: Tensor, acc: torch.dtype) -> bool:
    """Whether the generic backward computes its full-size passes in ``acc`` (CPU tensors
    of a narrower dtype, outside :func:`accelerator_paths`).

    The CPU converts mixed-dtype operands to temporaries inside its kernels anyway, so
    there the lean formulation saves nothing, and the wide one keeps the CPU's accuracy:
    the weight gradient of half input from float32 products, the input gradient rounded
    once.
    """
    return x.dtype != acc and x.device.type == "cpu" and not _state["accelerator"]


def row_sums(t: Tensor, acc: torch.dtype) -> Tensor:
    """Per-``(n, c)`` sum of ``t`` of shape ``(N, C, *S)`` over the positions, in ``acc``.

    A reduction over dims ``2..``: no reshape (hence no copy, whatever the strides), and with
    ``dtype=`` no converted copy of ``t`` on CUDA (half and bfloat16 are read as they are and
    summed in float32). 2-D input has one position per row: its sums are ``t`` itself.
    """
    if t.dim() == 2:
        return t.to(acc)
    return t.sum(dim=tuple(range(2, t.dim())), dtype=acc)


def _sample_chunks(x: Tensor) -> list[slice] | None:
    """Slices of whole samples of about ``_CHUNK_BYTES``, or None for small or
    autograd-tracked input (``out=`` ops cannot record a graph), or when torch runs
    more than one thread."""
    total = x.numel() * x.element_size()
    if total < _MIN_CHUNKED_BYTES or (torch.is_grad_enabled() and x.requires_grad):
        return None
    if torch.get_num_threads() > 1:
        # Every op on a chunk is a parallel region; on a busy machine each region can wait
        # a scheduler tick for a preempted thread (measured: 10x slower on 2 shared cores).
        return None
    n = x.shape[0]
    step = max(1, _CHUNK_BYTES * n // total)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _chunked_sums(
    a: Tensor, b: Tensor, chunks: list[slice], acc: torch.dtype, shift: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Per-``(n, c)`` ``sum a`` and ``sum a * (b - shift)`` in ``acc``, a chunk of samples at a
    time (``shift`` of shape ``(N, C)`` in ``b``'s dtype, or None for 0)."""
    n, c = a.shape[0], a.shape[1]
    total = torch.empty(n, c, dtype=acc, device=a.device)
    dot = torch.empty_like(total)
    scratch = torch.empty_like(a[chunks[0]])
    for chunk in chunks:
        ai = a[chunk]
        products = scratch[: ai.shape[0]]
        if shift is None:
            torch.mul(ai, b[chunk], out=products)
        else:
            torch.sub(b[chunk], shift[chunk].reshape(coeff_shape(ai)), out=products)
            products.mul_(ai)
        torch.sum(rows(ai), dim=2, dtype=acc, out=total[chunk])
        torch.sum(rows(products), dim=2, dtype=acc, out=dot[chunk])
    return total, dot


def input_sums(x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-``(n, c)`` sum and sum of squares of ``x``, in the accumulation dtype (the fast
    path's forward reduction; the generic path takes moments directly, see
    :func:`l2bn._impl.moments.input_moments`).

    The third value is a fresh tensor shaped like ``x`` that the fast path had to fill
    (with ``x * x``) and that the caller may overwrite with the output, or None.
    """
    acc = accumulation_dtype(x)
    x3 = rows(x)
    if x3.shape[2] == 1:
        xa = x3[:, :, 0].to(acc)
        return xa, xa.square(), None
    if x3.stride(2) == 1:
        s1 = x3.sum(dim=2, dtype=acc)
        # Rows are contiguous: the norm kernel vectorises along them, no temporary.
        return s1, torch.linalg.vector_norm(x3, dim=2, dtype=acc).square_(), None
    # channels_last and other layouts: the norm kernel is slow across strided rows, but a
    # product pass plus a plain sum is fast (chunked when large; otherwise its buffer
    # becomes the output later).
    chunks = _sample_chunks(x)
    if chunks is not None:
        return (*_chunked_sums(x, x, chunks, acc), None)
    squares = torch.mul(x, x)
    return x3.sum(dim=2, dtype=acc), rows(squares).sum(dim=2, dtype=acc), squares


def grad_sums(dy: Tensor, x: Tensor, shift: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-``(n, c)`` ``sum dy`` and ``sum dy * (x - shift)``, in the accumulation dtype.

    ``shift`` (shape ``(N, C)``, accumulation dtype) is subtracted element by element, in
    ``x``'s dtype, and the rounding of ``shift`` to that dtype is corrected afterwards:
    no cancellation under large channel offsets. The third value is a fresh tensor shaped
    like ``x`` that the caller may overwrite with the input gradient, or None.
    """
    acc = accumulation_dtype(x)
    if _fast(dy, x):
        near = shift.to(x.dtype)
        if _bn_kernel_applies(dy, x):
            t1, t2, buffer = _row_grad_sums_bn(dy, x, near)
            t1, t2 = t1.to(acc), t2.to(acc)
        else:
            chunks = _sample_chunks(x)
            if chunks is not None:
                t1, t2 = _chunked_sums(dy, x, chunks, acc, near)
                buffer = None
            else:
                buffer = torch.sub(x, near.reshape(coeff_shape(x)))
                buffer.mul_(dy)
                t1 = rows(dy).sum(dim=2, dtype=acc)
                t2 = rows(buffer).sum(dim=2, dtype=acc)
        if near.dtype != acc:
            t2 = t2.addcmul_(near.to(acc) - shift, t1)
        return t1, t2, buffer
    if _widened_on_cpu(x, acc):
        centred = torch.sub(x, shift.view(coeff_shape(x)))  # promoted to acc
        return row_sums(dy, acc), row_sums(centred.mul_(dy), acc), None
    # Generic: (x - shift) is computed in the accumulation dtype and rounded once to x's
    # dtype (centred, so the rounding is relative to the spread, not to the offset), then
    # multiplied by dy in place; both sums accumulate in ``acc`` without converted copies.
    buffer = torch.empty_like(x)
    torch.sub(x, shift.view(coeff_shape(x)), out=buffer)
    buffer.mul_(dy)
    t2 = row_sums(buffer, acc)
    # (N, C) input in the accumulation dtype: the sums are the buffer itself, not reusable.
    return row_sums(dy, acc), t2, (None if t2 is buffer else buffer)


def _row_grad_sums_bn(dy: Tensor, x: Tensor, shift: Tensor) -> tuple[Tensor, Tensor, None]:
    """Both backward sums in one read of ``dy`` and ``x``: BatchNorm's backward reduction
    over ``N * C`` rows (eval mode, mean ``shift``, variance 1, ``eps = 0``)."""
    n, c = x.shape[0], x.shape[1]
    view = (1, n * c, -1)
    ones = torch.ones(n * c, dtype=shift.dtype, device=shift.device)
    _, dot, total = torch.ops.aten.native_batch_norm_backward(
        dy.view(view),
        x.view(view),
        None,
        shift.reshape(-1),
        ones,
        None,
        None,
        False,
        0.0,
        [False, True, True],
    )
    return total.view(n, c), dot.view(n, c), None


def _row_affine_bn(x: Tensor, a: Tensor, b: Tensor, out: Tensor | None) -> Tensor:
    """``a[n, c] * x + b[n, c]`` by BatchNorm's eval kernel over ``N * C`` rows."""
    n, c = x.shape[0], x.shape[1]
    view = (1, n * c, -1)
    zeros = torch.zeros(n * c, dtype=a.dtype, device=a.device)
    ones = torch.ones(n * c, dtype=a.dtype, device=a.device)
    weight, bias = a.reshape(-1), b.expand(n, c).reshape(-1)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, a, b)):
        # Differentiable (eval path with autograd): a view of BatchNorm's output is fine.
        # Variance 0 and eps 1, not variance 1 and eps 0 (the same var + eps = 1 exactly):
        # F.batch_norm of torch 2.11 refuses eps <= 0 in eval too.
        y = F.batch_norm(x.view(view), zeros, zeros, weight, bias, False, 0.0, 1.0)
        return y.view(x.shape)
    if out is None:
        # A fresh tensor, not a view: a custom Function must not return a view (in-place
        # ops on it, e.g. ReLU(inplace=True), would be refused).
        out = torch.empty_like(x)
    empty = torch.empty(0, dtype=a.dtype, device=a.device)
    torch.ops.aten.native_batch_norm.out(
        x.view(view),
        weight,
        bias,
        zeros,
        ones,
        False,
        0.0,
        0.0,
        out=out.view(view),
        save_mean=empty,
        save_invstd=empty.clone(),
    )
    return out


def _bn_kernel_applies(*tensors: Tensor) -> bool:
    return (
        _fast(*tensors)
        and tensors[0].dim() > 2
        and rows(tensors[0]).shape[2] >= _MIN_ROW_LENGTH
        and all(t.is_contiguous() for t in tensors)
    )


def scale_shift(
    x: Tensor, a: Tensor, b: Tensor, out: Tensor | None = None, value: float = 1.0
) -> Tensor:
    """``value * a[n, c] * x + b[c]`` computed in ``a``'s dtype, returned in ``x``'s dtype.

    ``a`` has shape ``(N, C)`` and ``b`` shape ``(C,)``; ``out`` (a fresh tensor shaped like
    ``x``, e.g. from :func:`input_sums`) is filled and returned when given and usable.
    """
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, a, b))
    if grad or compiling():
        # Recorded by autograd (eval with gradients), which refuses out=; or by
        # torch.compile / torch.export, whose graphs may later run with gradients.
        out = None
    if _fast(x):
        if value != 1.0:
            a, value = a * value, 1.0
        if a.dtype != x.dtype:
            # float64 coefficients of float32 CPU input: the output pass runs in float32.
            a, b = a.to(x.dtype), b.to(x.dtype)
        if _bn_kernel_applies(x) and (out is None or out.is_contiguous()):
            return _row_affine_bn(x, a, b, out)
    elif out is None and not grad and not compiling() and a.dtype != x.dtype:
        out = torch.empty_like(x)  # generic: written in x's dtype, no full-size float32 tensor
    b, a = b.reshape(channel_shape(x)), a.reshape(coeff_shape(x))
    y = torch.addcmul(b, x, a, value=value, out=out)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def grad_combine(
    dy: Tensor, x: Tensor, p: Tensor, q: Tensor, r: Tensor, out: Tensor | None = None
) -> Tensor:
    """``p * dy + q * x + r`` with per-``(n, c)`` ``p, q, r`` of shape ``(N, C)``, in x's dtype.

    ``out`` (the buffer returned by :func:`grad_sums`) is overwritten when given.
    """
    shape = coeff_shape(x)
    fast = _fast(dy, x)
    # Computed in p's dtype, x and dy promoted: narrower CPU input off the fast path, and on
    # it, q ~ 1 / rho^2 of samples of huge norm (float32 values past about 1e19), which
    # x's dtype would flush, or of tiny norm (below about 1e-19 with l2_eps near 0), which
    # would overflow it (an infinite gradient where the true one is finite).
    widened = _widened_on_cpu(x, p.dtype) if not fast else p.dtype != x.dtype
    if widened and (not fast or _underflows(q, x.dtype) or _overflows(q, x.dtype)):
        dx = torch.addcmul(r.view(shape), x, q.view(shape))  # promoted to p's dtype
        return dx.addcmul_(dy, p.view(shape)).to(x.dtype)
    if not fast:
        # Generic: the x term first, ``q * x + r`` (computed in the accumulation dtype from
        # the exact input, rounded once to x's dtype): q and r nearly cancel under large
        # channel offsets, and only their sum, as small as the input's spread, is rounded;
        # then ``+ p * dy`` in place (the same promoted arithmetic, one more rounding).
        if out is None:
            out = torch.empty_like(x)
        torch.addcmul(r.view(shape), x, q.view(shape), out=out)
        return out.addcmul_(dy, p.view(shape))
    if p.dtype != x.dtype:
        p, q, r = p.to(x.dtype), q.to(x.dtype), r.to(x.dtype)
    qs = q.reshape(shape)
    if out is None or _fast(out):
        # Contiguous input: BatchNorm's kernel writes the output in one call; chunking it
        # measured no faster. Other layouts: chunk, so that the in-place update hits cache.
        contiguous = dy.is_contiguous() and x.is_contiguous()
        chunks = None if contiguous else _sample_chunks(x)
        if chunks is not None:
            if out is None:
                out = torch.empty_like(x, memory_format=torch.preserve_format)
            for chunk in chunks:
                _grad_combine_fast(dy[chunk], x[chunk], p[chunk], q[chunk], r[chunk], out[chunk])
            return out
        return _grad_combine_fast(dy, x, p, q, r, out)
    dx = torch.addcmul(r.reshape(shape), dy, p.reshape(shape))
    return dx.addcmul_(x, qs)


def _underflows(t: Tensor, dtype: torch.dtype) -> bool:
    """Whether a nonzero value of ``t`` (CPU, ``O(N * C)``: the check costs no
    synchronization) would round to fewer than 24 significant bits in ``dtype``."""
    limit = torch.finfo(dtype).tiny * 2.0**24
    magnitude = t.abs()
    return bool(((magnitude > 0) & (magnitude < limit)).any())


def _overflows(t: Tensor, dtype: torch.dtype) -> bool:
    """Whether a finite value of ``t`` (CPU, ``O(N * C)``) is too large for ``dtype``."""
    magnitude = t.abs()
    return bool(((magnitude > torch.finfo(dtype).max) & magnitude.isfinite()).any())


def _grad_combine_fast(
    dy: Tensor, x: Tensor, p: Tensor, q: Tensor, r: Tensor, out: Tensor | None
) -> Tensor:
    shape = coeff_shape(x)
    if _bn_kernel_applies(dy, x) and (out is None or out.is_contiguous()):
        out = _row_affine_bn(dy, p, r, out)
    else:
        out = torch.addcmul(r.reshape(shape), dy, p.reshape(shape), out=out)
    return out.addcmul_(x, q.reshape(shape))
