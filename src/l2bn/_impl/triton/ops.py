"""The Triton kernels as PyTorch operators: ``torch.ops.l2bn_triton.*``.

Each operator is a :func:`torch.library.triton_op` whose body allocates its outputs and
workspaces and launches the kernels of :mod:`l2bn._impl.triton.kernels` through
:func:`torch.library.wrap_triton`, so that ``torch.compile`` sees (and keeps) the kernels
and ``torch.export`` keeps the operator; each has an explicit fake implementation (the
same allocation code, no launch), which ``torch.export`` and fake-tensor tracing use.

* ``train_forward(x, weight?, bias?, running_mean?, running_var?, momentum, eps, l2_eps,
  scale) -> (y, rho, active, row_mean, row_var, mean, invstd)``; mutates the running
  statistics (BatchNorm's rule, ``momentum`` being this step's factor);
* ``train(x, weight?, bias?, eps, l2_eps, scale) -> (y, rho, active, row_mean, row_var,
  mean, invstd, var)``: ``train_forward`` without running statistics, returning the
  biased batch variance ``var`` too, with an autograd formula (what ``torch.export``
  records: it keeps no Python autograd function, and ``torch.library.register_autograd``
  refuses operators that mutate their inputs);
* ``train_backward(dy, x, weight?, rho, active, row_mean, row_var, mean, invstd, scale,
  input_grad) -> (dx, dweight, dbias)``;
* ``eval_forward(x, running_mean, running_var, weight?, bias?, eps, l2_eps, scale) -> y``;

and the full-size passes of SyncL2BatchNorm (:mod:`l2bn._impl.triton.sync`), whose inputs
may hold no sample (``N = 0``: nothing is launched):

* ``row_moments(x, l2_eps, scale) -> (rho, active, row_mean, row_var)``;
* ``scale_shift(x, a, b) -> y = a[n, c] * x + b[c]``;
* ``grad_row_sums(dy, x, mean, rho) -> (sum_s dy, sum_s dy * (x - mean[c] * rho[n]))``;
* ``grad_combine(dy, x, p, q, r) -> dx = p[n, c] * dy + q[n, c] * x + r[n, c]``.

The two training operators take one of two paths, decided by :func:`plan` alone
(``N * C <= FOLD_MAX_STATS``, 8192, with enough programs left for the row sums): folded,
the ``O(N * C)`` finalize runs inside the output kernel (forward ``row_sums`` +
``folded_affine``, backward ``grad_sums`` + ``folded_grad_input``, the latter alone for
``(N, C)`` input), every output program recomputing what it needs of it; otherwise the
finalize is a launch of its own (three per pass, two for the ``(N, C)`` backward). A
backward without ``input_grad`` has no output pass and runs the unfolded finalize either
way.

Shapes and dtypes: ``x`` is ``(N, C, *S)`` in float32, float16 or bfloat16 (NCHW-like,
channels_last or any strides that view as ``(N, C, M)`` or ``(N, M, C)``; others are
copied to contiguous first); ``y``, ``dx`` have ``x``'s shape, dtype and layout;
``rho``, ``active`` (0/1) are ``(N,)`` float32; ``row_mean``, ``row_var`` are the
``(N, C)`` float32 spatial moments of ``x`` (``train_forward`` leaves them empty, ``(0,)``,
for 2-D input, whose rows are ``x`` itself); ``mean``, ``invstd`` are ``(C,)`` float32
statistics of the normalized input. ``dweight`` has the weight's dtype (float32 without
weight), ``dbias`` that dtype or float32, whichever is wider (the bias's own dtype is not
known here; a float32 bias beside a float16 weight must not get a float16 sum).
Parameters and running statistics may be of any floating dtype and any strides (strided
ones are read from contiguous copies, running statistics written back); all statistics
are float32. The synchronized passes raise ``ValueError`` for samples without
values (no channel or no position). Called as operators, all of them refuse what their
kernels cannot address (``TypeError``/``ValueError``, as the CPU operators: input of
another dtype, too few dimensions or no value; per-channel, per-sample or per-row
tensors of another shape; a gradient of another shape); the eager calls of the layers,
checked by ``l2bn.functional`` first, run their bodies directly without these checks.

None of them synchronizes with the host: launch geometry depends on shapes only.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional  # the operators' schemas are inferred from these hints

import torch
from torch import Tensor
from torch.library import triton_op, wrap_triton

from l2bn._impl.triton import DTYPES  # the backend's one list of input dtypes
from l2bn._impl.triton import kernels as K

NAMESPACE = "l2bn_triton"


@dataclass
class Tiling:
    """Launch geometry (powers of two). Tests shrink it to cover multi-block paths on tiny
    inputs; it never depends on tensor values."""

    tile: int = 2048  # values per tile of the full-size passes
    max_block_s: int = 512  # positions per tile when positions are contiguous
    max_block_c: int = 128  # channels per tile when channels are contiguous
    target_programs: int = 1024  # reduction programs wanted (positions are split to get them)
    finalize_block_c: int = 32  # channels per finalize program
    finalize_tile: int = 2048  # values per finalize chunk (samples x channels)
    block_p: int = 64  # partial sums read at once
    eval_sample_tile: int = 8192  # a sample up to this size is evaluated by one program


TILING = Tiling()


def _pow2(v: int) -> int:
    return 1 << max(int(v) - 1, 0).bit_length()


def ncm_strides(t: Tensor) -> tuple[int, int, int] | None:
    """``(s_n, s_c, s_s)``: element strides of ``t`` of shape ``(N, C, *S)`` seen as
    ``(N, C, M)``, or None when its positions cannot be addressed with one stride."""
    n, c = t.shape[0], t.shape[1]
    m = math.prod(t.shape[2:])
    try:
        sn, sc, ss = t.view(n, c, m).stride()
        return sn, sc, ss
    except RuntimeError:
        pass
    try:
        sn, ss, sc = t.movedim(1, -1).view(n, m, c).stride()
        return sn, sc, ss
    except RuntimeError:
        return None


def addressable(t: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
    """``t`` (copied to contiguous if needed) and its ``(N, C, M)`` strides."""
    strides = ncm_strides(t)
    if strides is None:
        t = t.contiguous()
        strides = ncm_strides(t)
        assert strides is not None
    return t, strides


@dataclass(frozen=True)
class Geometry:
    """Tiles and grids of one ``(N, C, M)`` problem."""

    n: int
    c: int
    m: int
    block_c: int
    block_s: int
    n_cblocks: int
    n_sblocks: int
    n_splits: int
    split_len: int

    @property
    def n_parts(self) -> int:
        """Partial sums per sample written by a reduction pass."""
        return self.n_cblocks * self.n_splits

    @property
    def reduction_grid(self) -> tuple[int]:
        return (self.n * self.n_cblocks * self.n_splits,)

    @property
    def elementwise_grid(self) -> tuple[int]:
        return (self.n * self.n_cblocks * self.n_sblocks,)


def geometry(
    n: int,
    c: int,
    m: int,
    channels_fast: bool,
    tiling: Tiling | None = None,
    max_splits: int | None = None,
) -> Geometry:
    """Tile ``[block_c, block_s]`` oriented along the contiguous dimension; positions split
    into ``n_splits`` ranges (at most ``max_splits``) when ``n * n_cblocks`` programs would
    not fill the device. ``tiling`` defaults to the module's ``TILING`` as it is at the
    call."""
    tiling = TILING if tiling is None else tiling
    if channels_fast or m == 1:
        block_c = min(_pow2(c), tiling.max_block_c)
        block_s = min(_pow2(m), max(1, tiling.tile // block_c))
    else:
        block_s = min(_pow2(m), tiling.max_block_s)
        block_c = min(_pow2(c), max(1, tiling.tile // block_s))
    n_cblocks = -(-c // block_c)
    n_sblocks = -(-m // block_s)
    wanted = -(-tiling.target_programs // (n * n_cblocks))
    if max_splits is not None:
        wanted = min(wanted, max_splits)
    n_splits = max(1, min(wanted, n_sblocks))
    split_len = -(-n_sblocks // n_splits) * block_s
    n_splits = -(-m // split_len)
    return Geometry(n, c, m, block_c, block_s, n_cblocks, n_sblocks, n_splits, split_len)


def _finalize_blocks(n: int, c: int) -> tuple[int, int]:
    block_c = min(_pow2(c), TILING.finalize_block_c)
    return _finalize_block_n(n, block_c), block_c


def _finalize_block_n(n: int, block_c: int) -> int:
    """Samples per finalize chunk of ``block_c`` channels."""
    return min(_pow2(n), max(1, TILING.finalize_tile // block_c))


# --------------------------------------------------------------------------------------
# The finalize folded into the output pass (small N * C)

FOLD_MAX_STATS = 8192
"""Largest ``N * C`` whose ``O(N * C)`` finalize is folded into the output kernels (training
forward and backward one launch shorter; :func:`plan` decides). Tests set it to force
either path.

Folding trades a launch for redundant loads: every output program re-reads the partial
sums its part of the finalize needs (forward ``N * (n_parts + (2 * n_splits + 1) *
BLOCK_C)`` values, backward ``2 * n_splits * N * C`` plus ``N`` per channel block), where
the standalone finalize reads them once. :func:`plan` caps ``n_splits * N * C`` at this
threshold too, so a program re-reads at most about ``4 * FOLD_MAX_STATS`` float32 values
(128 KiB, from partials of at most 32 KiB per array that stay in L2 and L1), and
:func:`folded_groups` keeps a folded pass near ``TILING.target_programs`` programs, so the
redundant loads of one launch are bounded whatever the spatial size. 8192 is the smallest
power of two that takes both CIFAR shapes of the issue's target (``128 x 16`` and
``128 x 64``), where launches dominate; ImageNet-sized layers (``N * C >= 16384``) keep
the three launches, which there are a small part of bandwidth-bound passes. The number
is a bound from this cost model, not a measured optimum (nothing here has run on a GPU).
"""

FOLD_MAX_SPLIT_TILES = 4
"""Where the cap on position splits binds, a folded pass's row sums still run on enough
programs: each reads at most this many tiles (``TILING.tile`` values), else the pass is
not folded (channels_last input with many positions, whose row sums would otherwise run
on a few long programs)."""


def plan(n: int, c: int, m: int, channels_fast: bool) -> tuple[Geometry, bool]:
    """``(geometry, folded)`` of a training pass (forward and backward alike): the one
    place that decides whether the finalize is folded into the output kernel.

    Folded when ``N * C <= FOLD_MAX_STATS``, with the positions split into at most
    ``FOLD_MAX_STATS // (N * C)`` ranges, so that the per-split partial sums every output
    program re-reads hold at most ``FOLD_MAX_STATS`` values per array; unless that cap
    leaves a reduction program more than ``FOLD_MAX_SPLIT_TILES`` tiles of positions
    where the unfolded geometry has fewer. Otherwise the unfolded geometry."""
    geo = geometry(n, c, m, channels_fast)
    if n * c > FOLD_MAX_STATS:
        return geo, False
    cap = FOLD_MAX_STATS // max(n * c, 1)
    if geo.n_splits <= cap:
        return geo, True
    capped = geometry(n, c, m, channels_fast, max_splits=cap)
    if capped.block_c * capped.split_len <= FOLD_MAX_SPLIT_TILES * TILING.tile:
        return capped, True
    return geo, False


def folded_groups(geo: Geometry) -> tuple[int, int]:
    """``(n_groups, group_len)`` of a folded output pass: each program covers
    ``group_len`` positions (whole position blocks) of its rows, so that there are at most
    about ``TILING.target_programs`` programs, each paying the redundant finalize once."""
    rows = geo.n * geo.n_cblocks
    per = max(1, -(-rows * geo.n_sblocks // TILING.target_programs))
    per = min(per, geo.n_sblocks)
    n_groups = -(-geo.n_sblocks // per)
    return n_groups, per * geo.block_s


def _unbias(count: int, unbiased: bool) -> float:
    """The factor of the batch variance in the running-statistics update: BatchNorm's
    ``K / (K - 1)`` (``K`` values per channel), or 1 (the biased variance itself)."""
    return count / max(count - 1, 1) if unbiased else 1.0


def _rho_scale(x: Tensor, scale: bool) -> float:
    return 1.0 / math.sqrt(math.prod(x.shape[1:])) if scale else 1.0


def _f32(x: Tensor, *shape: int) -> Tensor:
    return torch.empty(shape, dtype=torch.float32, device=x.device)


_direct_launches = threading.local()


@contextlib.contextmanager
def direct_launches() -> Iterator[None]:
    """Launch the kernels straight from Triton (``kernel[grid]``) while in this block, as
    the operators do when called in eager mode: for the operators' bodies run directly,
    outside the dispatcher (``function._direct``: eager, plain tensors, no mode). Elsewhere
    every launch goes through :func:`torch.library.wrap_triton`, which a tracer needs to
    see the kernels and which outside an operator call dispatches each launch as a
    higher-order operator (on the H200 machine about 250 us of host time a launch)."""
    previous = getattr(_direct_launches, "on", False)
    _direct_launches.on = True
    try:
        yield
    finally:
        _direct_launches.on = previous


def _launch(kernel, grid, *args, **meta) -> None:
    if getattr(_direct_launches, "on", False):
        kernel[grid](*args, **meta)
    else:
        wrap_triton(kernel)[grid](*args, **meta)


def _ncm(x: Tensor) -> tuple[int, int, int]:
    n, c = x.shape[0], x.shape[1]
    return n, c, math.prod(x.shape[2:])


def _per_channel(t: Tensor | None) -> Tensor | None:
    """A ``(C,)`` tensor as the kernels address it (element ``c`` at ``ptr + c``): ``t``
    itself where contiguous, else a contiguous copy (a strided view, such as a column of a
    matrix, whose elements lie elsewhere)."""
    return None if t is None else t.contiguous()  # t itself where already contiguous


def _write_back(given: Tensor | None, used: Tensor | None) -> None:
    """Copy a running statistic updated in the contiguous copy :func:`_per_channel` made
    back into the (strided) tensor that was passed."""
    if used is not given:
        given.copy_(used)


def _check_operands(
    op: str,
    x: Tensor,
    channels: tuple[tuple[str, Tensor | None], ...] = (),
    samples: tuple[tuple[str, Tensor | None], ...] = (),
    rows: tuple[tuple[str, Tensor | None], ...] = (),
    dy: Tensor | None = None,
    no_sample: bool = False,
    empty_rows: bool = False,
) -> None:
    """Refuse, as the CPU operators do, arguments that the kernels cannot address (they
    would read them out of bounds or as another dtype). Run by the operators and their
    fakes; the eager calls of the layers and ``l2bn.functional``, whose arguments are
    checked before, run the bodies directly (``function._direct``) without it.

    ``channels``, ``samples``, ``rows``: ``(name, tensor)`` of ``(C,)``, ``(N,)`` and
    ``(N, C)`` tensors (None: absent); ``dy``: a gradient of ``x``'s shape;
    ``no_sample``: ``N = 0`` is accepted; ``empty_rows``: ``rows`` of 2-D input may be
    empty, ``(0,)`` (``train_forward``'s row moments, which the kernels do not read).
    """
    where = f"{NAMESPACE}.{op}"
    if x.dtype not in DTYPES:
        raise TypeError(f"{where}: expected float32, float16 or bfloat16 input, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"{where}: expected input of shape (N, C, *), got {tuple(x.shape)}")
    if x.numel() == 0 and not (no_sample and x.shape[0] == 0):
        raise ValueError(f"{where}: expected a non-empty input, got shape {tuple(x.shape)}")
    n, c = x.shape[0], x.shape[1]
    if dy is not None and dy.shape != x.shape:
        raise ValueError(f"{where}: dy of shape {tuple(dy.shape)}, input {tuple(x.shape)}")
    no_rows = (0,) if empty_rows and x.dim() == 2 else None
    for pairs, shape, other in (
        (channels, (c,), None),
        (samples, (n,), None),
        (rows, (n, c), no_rows),
    ):
        for name, t in pairs:
            if t is None:
                continue
            if not t.dtype.is_floating_point:
                raise TypeError(f"{where}: {name} must be a floating-point tensor, got {t.dtype}")
            if tuple(t.shape) not in (shape, other):
                raise ValueError(f"{where}: expected {name} of shape {shape}, got {tuple(t.shape)}")
            if t.device != x.device:
                raise ValueError(f"{where}: {name} is on {t.device}, the input on {x.device}")


def _check_forward(
    op: str,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
) -> None:
    channels = (
        ("weight", weight),
        ("bias", bias),
        ("running_mean", running_mean),
        ("running_var", running_var),
    )
    _check_operands(op, x, channels)


def _check_backward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    rho: Tensor,
    active: Tensor,
    row_mean: Tensor,
    row_var: Tensor,
    mean: Tensor,
    invstd: Tensor,
) -> None:
    channels = (("weight", weight), ("mean", mean), ("invstd", invstd))
    samples = (("rho", rho), ("active", active))
    rows = (("row_mean", row_mean), ("row_var", row_var))
    _check_operands("train_backward", x, channels, samples, rows, dy, empty_rows=True)


def _check_samples(x: Tensor) -> None:
    """The synchronized operators take ``N = 0`` (a process holding no sample), not empty
    samples (no channel or no position), which no kernel geometry covers."""
    if x.numel() == 0 and x.shape[0] > 0:
        raise ValueError(f"l2bn_triton: samples of shape {tuple(x.shape[1:])} are empty")


# --------------------------------------------------------------------------------------
# Launches shared by the operators


def _row_sums(
    x: Tensor, strides: tuple[int, int, int], geo: Geometry, write_sums: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Launch ``row_sums``; returns its partials ``(s1, s2, shifts, sq)`` (without
    ``write_sums`` only ``sq`` is written and the other three are ``sq`` itself)."""
    n, c, m = geo.n, geo.c, geo.m
    sq = _f32(x, n * geo.n_parts)
    if write_sums:
        s1, s2 = _f32(x, geo.n_splits * n * c), _f32(x, geo.n_splits * n * c)
        shifts = _f32(x, n * c)
    else:
        s1 = s2 = shifts = sq
    sxn, sxc, sxs = strides
    _launch(
        K.row_sums_kernel, geo.reduction_grid,
        x, s1, s2, shifts, sq, n, c, m, sxn, sxc, sxs,
        geo.n_cblocks, geo.n_splits, geo.split_len,
        WRITE_SUMS=write_sums, BLOCK_C=geo.block_c, BLOCK_S=geo.block_s,
    )  # fmt: skip
    return s1, s2, shifts, sq


def _forward_finalize(
    x: Tensor,
    strides: tuple[int, int, int],
    geo: Geometry,
    partials: tuple[Tensor, Tensor, Tensor, Tensor],
    stats: tuple[Tensor, ...],
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    momentum: float,
    eps: float,
    l2_eps: float,
    scale: bool,
    vector: bool,
    unbiased: bool = True,
) -> None:
    """Launch ``forward_finalize`` on the partials of ``row_sums``; writes ``stats``
    (``rho, active, row_mean, row_var, mean, invstd, gain, shift``) and the running
    statistics given (towards the biased batch variance where not ``unbiased``)."""
    s1, s2, shifts, sq = partials
    rho, active, row_mean, row_var, mean, invstd, gain, shift = stats
    n, c, m = geo.n, geo.c, geo.m
    sxn, sxc, _sxs = strides
    block_n, block_c = _finalize_blocks(n, c)
    count = n * m
    _launch(
        K.forward_finalize_kernel, (-(-c // block_c),),
        x, s1, s2, shifts, sq,
        mean if weight is None else weight, mean if bias is None else bias,
        mean if running_mean is None else running_mean,
        mean if running_var is None else running_var,
        rho, active, row_mean, row_var, mean, invstd, gain, shift,
        n, c, sxn, sxc, geo.n_parts, geo.n_splits,
        1.0 / m, _rho_scale(x, scale), l2_eps, eps, momentum, _unbias(count, unbiased),
        VECTOR=vector, HAS_W=weight is not None, HAS_B=bias is not None,
        HAS_RM=running_mean is not None, HAS_RV=running_var is not None,
        BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_P=TILING.block_p,
    )  # fmt: skip


def _affine(
    x: Tensor,
    strides: tuple[int, int, int],
    y: Tensor,
    geo: Geometry,
    rho: Tensor,
    gain: Tensor,
    shift: Tensor,
    rows: bool,
) -> None:
    """Launch the training output pass: ``y = x * gain[c] / rho[n] + shift[c]``, or with
    ``rows`` ``y = gain[n, c] * x + shift[c]`` (``rho`` unused)."""
    sxn, sxc, sxs = strides
    syn, syc, sys_ = ncm_strides(y)
    _launch(
        K.affine_kernel, geo.elementwise_grid,
        x, y, rho, rho, gain, shift, gain, shift, gain, shift,
        geo.c, geo.m, sxn, sxc, sxs, syn, syc, sys_, geo.n_cblocks, geo.n_sblocks, geo.n_parts,
        1.0, 0.0, 0.0,
        EVAL=False, ROWS=rows, HAS_W=False, HAS_B=False,
        BLOCK_C=geo.block_c, BLOCK_S=geo.block_s, BLOCK_P=TILING.block_p,
    )  # fmt: skip


def _folded_affine(
    x: Tensor,
    strides: tuple[int, int, int],
    y: Tensor,
    geo: Geometry,
    partials: tuple[Tensor, Tensor, Tensor, Tensor],
    stats: tuple[Tensor, ...],
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    momentum: float,
    eps: float,
    l2_eps: float,
    scale: bool,
    vector: bool,
    unbiased: bool = True,
) -> None:
    """Launch ``folded_affine`` on the partials of ``row_sums``: the finalize and the
    output pass in one launch; writes ``y``, ``stats`` (``rho, active, row_mean, row_var,
    mean, invstd``) and the running statistics given (as :func:`_forward_finalize`)."""
    s1, s2, shifts, sq = partials
    rho, active, row_mean, row_var, mean, invstd = stats
    n, c, m = geo.n, geo.c, geo.m
    sxn, sxc, sxs = strides
    syn, syc, sys_ = ncm_strides(y)
    n_groups, group_len = folded_groups(geo)
    count = n * m
    _launch(
        K.folded_affine_kernel, (n * geo.n_cblocks * n_groups,),
        x, y, s1, s2, shifts, sq,
        mean if weight is None else weight, mean if bias is None else bias,
        mean if running_mean is None else running_mean,
        mean if running_var is None else running_var,
        rho, active, row_mean, row_var, mean, invstd,
        n, c, m, sxn, sxc, sxs, syn, syc, sys_,
        geo.n_cblocks, n_groups, group_len, geo.n_parts, geo.n_splits,
        1.0 / m, _rho_scale(x, scale), l2_eps, eps, momentum, _unbias(count, unbiased),
        VECTOR=vector, HAS_W=weight is not None, HAS_B=bias is not None,
        HAS_RM=running_mean is not None, HAS_RV=running_var is not None,
        BLOCK_N=_finalize_block_n(n, geo.block_c), BLOCK_C=geo.block_c, BLOCK_S=geo.block_s,
        BLOCK_P=min(_pow2(geo.n_parts), TILING.block_p),
    )  # fmt: skip


def _grad_sums(
    dy: Tensor,
    dy_strides: tuple[int, int, int],
    x: Tensor,
    x_strides: tuple[int, int, int],
    geo: Geometry,
    rho: Tensor,
    mean: Tensor,
    shape: tuple[int, ...],
) -> tuple[Tensor, Tensor]:
    """Launch ``grad_sums``; returns ``(t1, t2)`` of ``shape`` (``n_splits * N * C``
    values, split-major)."""
    t1, t2 = _f32(x, *shape), _f32(x, *shape)
    sdn, sdc, sds = dy_strides
    sxn, sxc, sxs = x_strides
    _launch(
        K.grad_sums_kernel, geo.reduction_grid,
        dy, x, rho, mean, t1, t2, geo.n, geo.c, geo.m, sdn, sdc, sds, sxn, sxc, sxs,
        geo.n_cblocks, geo.n_splits, geo.split_len,
        BLOCK_C=geo.block_c, BLOCK_S=geo.block_s,
    )  # fmt: skip
    return t1, t2


def _grad_input(
    dy: Tensor,
    dy_strides: tuple[int, int, int],
    x: Tensor,
    x_strides: tuple[int, int, int],
    dx: Tensor,
    geo: Geometry,
    rho: Tensor,
    active: Tensor,
    epart: Tensor,
    coefficients: tuple[Tensor, Tensor, Tensor],
    n_parts: int,
    proj_scale: float,
    rows: bool,
) -> None:
    """Launch ``grad_input``: ``dx = P * dy + Q * x + R`` (see the kernel; with ``rows``,
    ``coefficients`` are ``P, Q, R`` themselves and the other statistics are unused)."""
    sdn, sdc, sds = dy_strides
    sxn, sxc, sxs = x_strides
    son, soc, sos = ncm_strides(dx)
    _launch(
        K.grad_input_kernel, geo.elementwise_grid,
        dy, x, dx, rho, active, epart, *coefficients,
        geo.c, geo.m, sdn, sdc, sds, sxn, sxc, sxs, son, soc, sos,
        geo.n_cblocks, geo.n_sblocks, n_parts, proj_scale,
        ROWS=rows, BLOCK_C=geo.block_c, BLOCK_S=geo.block_s, BLOCK_P=TILING.block_p,
    )  # fmt: skip


def _folded_grad_input(
    dy: Tensor,
    dy_strides: tuple[int, int, int],
    x: Tensor,
    x_strides: tuple[int, int, int],
    dx: Tensor,
    geo: Geometry,
    sums: tuple[Tensor, Tensor],
    stats: tuple[Tensor, ...],
    weight: Tensor | None,
    grads: tuple[Tensor, Tensor],
    scale: bool,
    vector: bool,
) -> None:
    """Launch ``folded_grad_input``: the backward finalize and the input gradient in one
    launch; writes ``dx`` and ``grads`` (``dweight``, ``dbias``)."""
    t1, t2 = sums
    rho, active, row_mean, row_var, mean, invstd = stats
    dweight, dbias = grads
    n, c, m = geo.n, geo.c, geo.m
    sdn, sdc, sds = dy_strides
    sxn, sxc, sxs = x_strides
    son, soc, sos = ncm_strides(dx)
    n_groups, group_len = folded_groups(geo)
    _launch(
        K.folded_grad_input_kernel, (n * geo.n_cblocks * n_groups,),
        dy, x, dx, t1, t2, rho, active, row_mean, row_var, mean, invstd,
        mean if weight is None else weight, dweight, dbias,
        n, c, m, sdn, sdc, sds, sxn, sxc, sxs, son, soc, sos,
        geo.n_cblocks, n_groups, group_len, geo.n_splits, float(m), float(n * m),
        1.0 / (c * m) if scale else 1.0,
        VECTOR=vector, HAS_W=weight is not None,
        BLOCK_N=_finalize_block_n(n, geo.block_c), BLOCK_C=geo.block_c, BLOCK_S=geo.block_s,
    )  # fmt: skip


# --------------------------------------------------------------------------------------
# train_forward


def _train_forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    momentum: float,
    eps: float,
    l2_eps: float,
    scale: bool,
    launch: bool,
    unbiased: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    x, strides = addressable(x)
    n, c, m = _ncm(x)
    vector = x.dim() == 2
    y = torch.empty_like(x)
    rho, active = _f32(x, n), _f32(x, n)
    mean, invstd = _f32(x, c), _f32(x, c)
    row_mean = _f32(x, 0) if vector else _f32(x, n, c)
    row_var = _f32(x, 0) if vector else _f32(x, n, c)
    outputs = (y, rho, active, row_mean, row_var, mean, invstd)
    if not launch:
        return outputs
    weight, bias = _per_channel(weight), _per_channel(bias)
    rm, rv = _per_channel(running_mean), _per_channel(running_var)
    geo, fold = plan(n, c, m, strides[1] == 1)
    partials = _row_sums(x, strides, geo, write_sums=not vector)
    if fold:
        _folded_affine(
            x, strides, y, geo, partials, outputs[1:], weight, bias, rm, rv,
            momentum, eps, l2_eps, scale, vector, unbiased,
        )  # fmt: skip
    else:
        gain, shift = _f32(x, c), _f32(x, c)
        stats = (rho, active, row_mean, row_var, mean, invstd, gain, shift)
        _forward_finalize(
            x, strides, geo, partials, stats, weight, bias, rm, rv,
            momentum, eps, l2_eps, scale, vector, unbiased,
        )  # fmt: skip
        _affine(x, strides, y, geo, rho, gain, shift, rows=False)
    _write_back(running_mean, rm)
    _write_back(running_var, rv)
    return outputs


@triton_op(f"{NAMESPACE}::train_forward", mutates_args={"running_mean", "running_var"})
def train_forward(
    x: Tensor,
    weight: Optional[Tensor],  # noqa: UP045
    bias: Optional[Tensor],  # noqa: UP045
    running_mean: Optional[Tensor],  # noqa: UP045
    running_var: Optional[Tensor],  # noqa: UP045
    momentum: float,
    eps: float,
    l2_eps: float,
    scale: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Training-mode L2BN (eqs. 2-3), running statistics updated: two kernel launches
    where the finalize is folded into the output pass (:func:`plan`), else three."""
    _check_forward("train_forward", x, weight, bias, running_mean, running_var)
    return _train_forward(
        x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale, True
    )


@train_forward.register_fake
def _train_forward_fake(x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale):
    _check_forward("train_forward", x, weight, bias, running_mean, running_var)
    return _train_forward(
        x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale, False
    )


# --------------------------------------------------------------------------------------
# train: train_forward without the mutation, for torch.export


def _train(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    l2_eps: float,
    scale: bool,
    launch: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    # The kernels' running-statistics update of zeros with factor 1 writes the batch mean
    # and biased variance themselves: the launches of train_forward, nothing mutated.
    c = x.shape[1]
    batch_mean, var = (torch.zeros((c,), dtype=torch.float32, device=x.device) for _ in range(2))
    outputs = _train_forward(
        x, weight, bias, batch_mean, var, 1.0, eps, l2_eps, scale, launch, unbiased=False
    )
    return (*outputs, var)


@triton_op(f"{NAMESPACE}::train", mutates_args=())
def train(
    x: Tensor,
    weight: Optional[Tensor],  # noqa: UP045
    bias: Optional[Tensor],  # noqa: UP045
    eps: float,
    l2_eps: float,
    scale: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Training-mode L2BN without running statistics, for ``torch.export``: the outputs of
    ``train_forward`` and the biased batch variance ``var`` (``(C,)`` float32), from
    which the caller updates the running statistics; the launches of ``train_forward``.
    Its autograd formula is registered by :mod:`l2bn._impl.triton.function`."""
    _check_forward("train", x, weight, bias)
    return _train(x, weight, bias, eps, l2_eps, scale, True)


@train.register_fake
def _train_fake(x, weight, bias, eps, l2_eps, scale):
    _check_forward("train", x, weight, bias)
    return _train(x, weight, bias, eps, l2_eps, scale, False)


# --------------------------------------------------------------------------------------
# train_backward


def _train_backward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    rho: Tensor,
    active: Tensor,
    row_mean: Tensor,
    row_var: Tensor,
    mean: Tensor,
    invstd: Tensor,
    scale: bool,
    input_grad: bool,
    launch: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    x, x_strides = addressable(x)
    dy, dy_strides = addressable(dy)
    n, c, m = _ncm(x)
    vector = x.dim() == 2
    grad_dtype = torch.float32 if weight is None else weight.dtype
    dweight = torch.empty((c,), dtype=grad_dtype, device=x.device)
    # Not narrower than float32: the bias may be wider than the weight (train_grads casts).
    bias_grad_dtype = torch.float64 if grad_dtype == torch.float64 else torch.float32
    dbias = torch.empty((c,), dtype=bias_grad_dtype, device=x.device)
    dx = torch.empty_like(x) if input_grad else x.new_empty((0,))
    outputs = (dx, dweight, dbias)
    if not launch:
        return outputs
    weight = _per_channel(weight)
    geo, fold = plan(n, c, m, x_strides[1] == 1)
    if vector:
        t1 = t2 = _f32(x, 1)  # the finalize reads dy and x directly
    else:
        shape = (geo.n_splits * n * c,)
        t1, t2 = _grad_sums(dy, dy_strides, x, x_strides, geo, rho, mean, shape)
    if fold and input_grad:
        stats = (rho, active, row_mean, row_var, mean, invstd)
        _folded_grad_input(
            dy, dy_strides, x, x_strides, dx, geo, (t1, t2), stats, weight, (dweight, dbias),
            scale, vector,
        )  # fmt: skip
        return outputs
    block_n, block_c = _finalize_blocks(n, c)
    programs = -(-c // block_c)
    epart = _f32(x, n * programs)
    gain, qc, rc = _f32(x, c), _f32(x, c), _f32(x, c)
    sdn, sdc, _sds = dy_strides
    sxn, sxc, _sxs = x_strides
    _launch(
        K.backward_finalize_kernel, (programs,),
        dy, x, t1, t2, rho, row_mean, row_var, mean, invstd,
        mean if weight is None else weight, dweight, dbias, epart, gain, qc, rc,
        n, c, sdn, sdc, sxn, sxc, geo.n_splits, programs, float(m), float(n * m),
        VECTOR=vector, HAS_W=weight is not None, INPUT_GRAD=input_grad,
        BLOCK_N=block_n, BLOCK_C=block_c,
    )  # fmt: skip
    if input_grad:
        _grad_input(
            dy, dy_strides, x, x_strides, dx, geo, rho, active, epart, (gain, qc, rc),
            programs, 1.0 / (c * m) if scale else 1.0, rows=False,
        )  # fmt: skip
    return outputs


@triton_op(f"{NAMESPACE}::train_backward", mutates_args=())
def train_backward(
    dy: Tensor,
    x: Tensor,
    weight: Optional[Tensor],  # noqa: UP045
    rho: Tensor,
    active: Tensor,
    row_mean: Tensor,
    row_var: Tensor,
    mean: Tensor,
    invstd: Tensor,
    scale: bool,
    input_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of training-mode L2BN from ``x`` and the forward's statistics: two
    launches where the finalize is folded into the input-gradient pass
    (:func:`plan`; one for ``(N, C)`` input), else three (two for ``(N, C)``);
    without ``input_grad`` the row sums and the finalize (the finalize alone for
    ``(N, C)``)."""
    _check_backward(dy, x, weight, rho, active, row_mean, row_var, mean, invstd)
    return _train_backward(
        dy, x, weight, rho, active, row_mean, row_var, mean, invstd, scale, input_grad, True
    )


@train_backward.register_fake
def _train_backward_fake(
    dy, x, weight, rho, active, row_mean, row_var, mean, invstd, scale, input_grad
):
    _check_backward(dy, x, weight, rho, active, row_mean, row_var, mean, invstd)
    return _train_backward(
        dy, x, weight, rho, active, row_mean, row_var, mean, invstd, scale, input_grad, False
    )


# --------------------------------------------------------------------------------------
# eval_forward


def _eval_forward(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    l2_eps: float,
    scale: bool,
    launch: bool,
) -> Tensor:
    x, strides = addressable(x)
    sxn, sxc, sxs = strides
    n, c, m = _ncm(x)
    y = torch.empty_like(x)
    if not launch:
        return y
    syn, syc, sys_ = ncm_strides(y)
    running_mean, running_var = _per_channel(running_mean), _per_channel(running_var)
    weight, bias = _per_channel(weight), _per_channel(bias)
    w = running_mean if weight is None else weight
    b = running_mean if bias is None else bias
    flags = {"HAS_W": weight is not None, "HAS_B": bias is not None}
    if _pow2(c) * _pow2(m) <= TILING.eval_sample_tile:
        _launch(
            K.eval_sample_kernel, (n,),
            x, y, w, b, running_mean, running_var, c, m, sxn, sxc, sxs, syn, syc, sys_,
            _rho_scale(x, scale), l2_eps, eps,
            BLOCK_C=_pow2(c), BLOCK_S=_pow2(m), **flags,
        )  # fmt: skip
        return y
    geo = geometry(n, c, m, sxc == 1)
    _s1, _s2, _shifts, sq = _row_sums(x, strides, geo, write_sums=False)
    _launch(
        K.affine_kernel, geo.elementwise_grid,
        x, y, sq, sq, sq, sq, w, b, running_mean, running_var,
        c, m, sxn, sxc, sxs, syn, syc, sys_, geo.n_cblocks, geo.n_sblocks, geo.n_parts,
        _rho_scale(x, scale), l2_eps, eps,
        EVAL=True, ROWS=False, BLOCK_C=geo.block_c, BLOCK_S=geo.block_s,
        BLOCK_P=TILING.block_p, **flags,
    )  # fmt: skip
    return y


@triton_op(f"{NAMESPACE}::eval_forward", mutates_args=())
def eval_forward(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Optional[Tensor],  # noqa: UP045
    bias: Optional[Tensor],  # noqa: UP045
    eps: float,
    l2_eps: float,
    scale: bool,
) -> Tensor:
    """Eval-mode L2BN with the running statistics: one launch when a sample fits in one
    tile, else two (partial norms, then the output pass with the statistics folded in)."""
    _check_forward("eval_forward", x, weight, bias, running_mean, running_var)
    return _eval_forward(x, running_mean, running_var, weight, bias, eps, l2_eps, scale, True)


@eval_forward.register_fake
def _eval_forward_fake(x, running_mean, running_var, weight, bias, eps, l2_eps, scale):
    _check_forward("eval_forward", x, weight, bias, running_mean, running_var)
    return _eval_forward(x, running_mean, running_var, weight, bias, eps, l2_eps, scale, False)


# --------------------------------------------------------------------------------------
# The full-size passes of SyncL2BatchNorm (l2bn._impl.triton.sync), whose O(N * C) steps
# between the kernels need every process's channel statistics: N may be 0 there.


def _row_moments(
    x: Tensor, l2_eps: float, scale: bool, launch: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_samples(x)
    _check_operands("row_moments", x, no_sample=True)
    x, strides = addressable(x)
    n, c, m = _ncm(x)
    rho, active = _f32(x, n), _f32(x, n)
    row_mean, row_var = _f32(x, n, c), _f32(x, n, c)
    outputs = (rho, active, row_mean, row_var)
    if not launch or n == 0:
        return outputs
    geo = geometry(n, c, m, strides[1] == 1)
    partials = _row_sums(x, strides, geo, write_sums=True)
    # This process's channel statistics and coefficients: computed, not used (the layer
    # needs the statistics of the whole group); eps = 1 keeps them finite.
    local = _f32(x, 4, c).unbind(0)
    stats = (rho, active, row_mean, row_var, *local)
    _forward_finalize(
        x, strides, geo, partials, stats, None, None, None, None, 0.0, 1.0, l2_eps, scale,
        vector=False,
    )  # fmt: skip
    return outputs


@triton_op(f"{NAMESPACE}::row_moments", mutates_args=())
def row_moments(x: Tensor, l2_eps: float, scale: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(rho, active, row_mean, row_var)`` of ``x`` (``(N, C, *S)``, ``N`` may be 0):
    ``rho[n]`` of eq. (3) and the 0/1 activity (norm not clamped by ``l2_eps``), ``(N,)``;
    the spatial mean and population variance of each row ``x[n, c]``, ``(N, C)``; all
    float32. Two launches, ``row_sums`` and ``forward_finalize`` without running
    statistics; none for ``N = 0``."""
    return _row_moments(x, l2_eps, scale, True)


@row_moments.register_fake
def _row_moments_fake(x, l2_eps, scale):
    return _row_moments(x, l2_eps, scale, False)


def _scale_shift(x: Tensor, a: Tensor, b: Tensor, launch: bool) -> Tensor:
    _check_samples(x)
    _check_operands("scale_shift", x, channels=(("b", b),), rows=(("a", a),), no_sample=True)
    x, strides = addressable(x)
    n, c, m = _ncm(x)
    y = torch.empty_like(x)
    if not launch or n == 0:
        return y
    geo = geometry(n, c, m, strides[1] == 1)
    _affine(x, strides, y, geo, a, a.contiguous(), b.contiguous(), rows=True)
    return y


@triton_op(f"{NAMESPACE}::scale_shift", mutates_args=())
def scale_shift(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``y = a[n, c] * x + b[c]`` (eqs. 2-3 with ``a``, ``b`` from the group's statistics):
    ``a`` float32 ``(N, C)``, ``b`` float32 ``(C,)``; ``y`` has ``x``'s shape, dtype and
    layout. One launch of ``affine``; none for ``N = 0``."""
    return _scale_shift(x, a, b, True)


@scale_shift.register_fake
def _scale_shift_fake(x, a, b):
    return _scale_shift(x, a, b, False)


def _grad_row_sums(
    dy: Tensor, x: Tensor, mean: Tensor, rho: Tensor, launch: bool
) -> tuple[Tensor, Tensor]:
    _check_samples(x)
    channels, samples = (("mean", mean),), (("rho", rho),)
    _check_operands("grad_row_sums", x, channels, samples, dy=dy, no_sample=True)
    x, x_strides = addressable(x)
    dy, dy_strides = addressable(dy)
    n, c, m = _ncm(x)
    if not launch or n == 0:
        return _f32(x, n, c), _f32(x, n, c)
    geo = geometry(n, c, m, x_strides[1] == 1)
    shape = (n, c) if geo.n_splits == 1 else (geo.n_splits, n, c)
    t1, t2 = _grad_sums(dy, dy_strides, x, x_strides, geo, rho, mean, shape)
    if geo.n_splits == 1:
        return t1, t2
    return t1.sum(0), t2.sum(0)


@triton_op(f"{NAMESPACE}::grad_row_sums", mutates_args=())
def grad_row_sums(dy: Tensor, x: Tensor, mean: Tensor, rho: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row sums of the backward, ``(N, C)`` float32: ``sum_s dy`` and
    ``sum_s dy * (x - mean[c] * rho[n])`` (centred element by element), for float32
    ``mean`` ``(C,)`` and ``rho`` ``(N,)``. One launch of ``grad_sums`` (and a sum over
    the splits of the positions when there are several); none for ``N = 0``."""
    return _grad_row_sums(dy, x, mean, rho, True)


@grad_row_sums.register_fake
def _grad_row_sums_fake(dy, x, mean, rho):
    return _grad_row_sums(dy, x, mean, rho, False)


def _grad_combine(dy: Tensor, x: Tensor, p: Tensor, q: Tensor, r: Tensor, launch: bool) -> Tensor:
    _check_samples(x)
    rows = (("p", p), ("q", q), ("r", r))
    _check_operands("grad_combine", x, rows=rows, dy=dy, no_sample=True)
    x, x_strides = addressable(x)
    dy, dy_strides = addressable(dy)
    n, c, m = _ncm(x)
    dx = torch.empty_like(x)
    if not launch or n == 0:
        return dx
    geo = geometry(n, c, m, x_strides[1] == 1)
    p, q, r = p.contiguous(), q.contiguous(), r.contiguous()
    _grad_input(
        dy, dy_strides, x, x_strides, dx, geo, p, p, p, (p, q, r), 1, 1.0, rows=True
    )  # fmt: skip
    return dx


@triton_op(f"{NAMESPACE}::grad_combine", mutates_args=())
def grad_combine(dy: Tensor, x: Tensor, p: Tensor, q: Tensor, r: Tensor) -> Tensor:
    """``dx = p[n, c] * dy + q[n, c] * x + r[n, c]`` for float32 ``(N, C)`` coefficients;
    ``dx`` has ``x``'s shape, dtype and layout. One launch of ``grad_input``; none for
    ``N = 0``."""
    return _grad_combine(dy, x, p, q, r, True)


@grad_combine.register_fake
def _grad_combine_fake(dy, x, p, q, r):
    return _grad_combine(dy, x, p, q, r, False)


OPERATORS = (train_forward, train, train_backward, eval_forward)
SYNC_OPERATORS = (row_moments, scale_shift, grad_row_sums, grad_combine)
