"""The Triton kernels as PyTorch operators: ``torch.ops.l2bn_triton.*``.

Each operator is a :func:`torch.library.triton_op` whose body allocates its outputs and
workspaces and launches the kernels of :mod:`l2bn._impl.triton.kernels` through
:func:`torch.library.wrap_triton`, so that ``torch.compile`` sees (and keeps) the kernels
and ``torch.export`` keeps the operator; each has an explicit fake implementation (the
same allocation code, no launch), which ``torch.export`` and fake-tensor tracing use.

* ``train_forward(x, weight?, bias?, running_mean?, running_var?, momentum, eps, l2_eps,
  scale) -> (y, rho, active, row_mean, row_var, mean, invstd)``; mutates the running
  statistics (BatchNorm's rule, ``momentum`` being this step's factor);
* ``train_backward(dy, x, weight?, rho, active, row_mean, row_var, mean, invstd, scale,
  input_grad) -> (dx, dweight, dbias)``;
* ``eval_forward(x, running_mean, running_var, weight?, bias?, eps, l2_eps, scale) -> y``.

Shapes and dtypes: ``x`` is ``(N, C, *S)`` in float32, float16 or bfloat16 (NCHW-like,
channels_last or any strides that view as ``(N, C, M)`` or ``(N, M, C)``; others are
copied to contiguous first); ``y``, ``dx`` have ``x``'s shape, dtype and layout;
``rho``, ``active`` (0/1) are ``(N,)`` float32; ``row_mean``, ``row_var`` are the
``(N, C)`` float32 spatial moments of ``x`` (empty ``(0,)`` for 2-D input, whose rows are
``x`` itself); ``mean``, ``invstd`` are ``(C,)`` float32 statistics of the normalized
input. ``dweight``/``dbias`` have the weight's dtype (float32 without weight). Parameters
and running statistics may be of any floating dtype; all statistics are float32.

None of them synchronizes with the host: launch geometry depends on shapes only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional  # the operators' schemas are inferred from these hints

import torch
from torch import Tensor
from torch.library import triton_op, wrap_triton

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


def geometry(n: int, c: int, m: int, channels_fast: bool, tiling: Tiling = TILING) -> Geometry:
    """Tile ``[block_c, block_s]`` oriented along the contiguous dimension; positions split
    into ``n_splits`` ranges when ``n * n_cblocks`` programs would not fill the device."""
    if channels_fast or m == 1:
        block_c = min(_pow2(c), tiling.max_block_c)
        block_s = min(_pow2(m), max(1, tiling.tile // block_c))
    else:
        block_s = min(_pow2(m), tiling.max_block_s)
        block_c = min(_pow2(c), max(1, tiling.tile // block_s))
    n_cblocks = -(-c // block_c)
    n_sblocks = -(-m // block_s)
    wanted = -(-tiling.target_programs // (n * n_cblocks))
    n_splits = max(1, min(wanted, n_sblocks))
    split_len = -(-n_sblocks // n_splits) * block_s
    n_splits = -(-m // split_len)
    return Geometry(n, c, m, block_c, block_s, n_cblocks, n_sblocks, n_splits, split_len)


def _finalize_blocks(n: int, c: int, tiling: Tiling = TILING) -> tuple[int, int]:
    block_c = min(_pow2(c), tiling.finalize_block_c)
    block_n = min(_pow2(n), max(1, tiling.finalize_tile // block_c))
    return block_n, block_c


def _rho_scale(x: Tensor, scale: bool) -> float:
    return 1.0 / math.sqrt(math.prod(x.shape[1:])) if scale else 1.0


def _f32(x: Tensor, *shape: int) -> Tensor:
    return torch.empty(shape, dtype=torch.float32, device=x.device)


def _launch(kernel, grid, *args, **meta) -> None:
    wrap_triton(kernel)[grid](*args, **meta)


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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    x, (sxn, sxc, sxs) = addressable(x)
    n, c = x.shape[0], x.shape[1]
    m = x.numel() // (n * c)
    vector = x.dim() == 2
    y = torch.empty_like(x)
    rho, active = _f32(x, n), _f32(x, n)
    mean, invstd = _f32(x, c), _f32(x, c)
    row_mean = _f32(x, 0) if vector else _f32(x, n, c)
    row_var = _f32(x, 0) if vector else _f32(x, n, c)
    outputs = (y, rho, active, row_mean, row_var, mean, invstd)
    if not launch:
        return outputs
    geo = geometry(n, c, m, sxc == 1)
    sums = 1 if vector else geo.n_splits * n * c
    s1, s2 = _f32(x, sums), _f32(x, sums)
    shifts = _f32(x, 1 if vector else n * c)
    sq = _f32(x, n * geo.n_parts)
    gain, shift = _f32(x, c), _f32(x, c)
    _launch(
        K.row_sums_kernel, geo.reduction_grid,
        x, s1, s2, shifts, sq, n, c, m, sxn, sxc, sxs,
        geo.n_cblocks, geo.n_splits, geo.split_len,
        WRITE_SUMS=not vector, BLOCK_C=geo.block_c, BLOCK_S=geo.block_s,
    )  # fmt: skip
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
        1.0 / m, _rho_scale(x, scale), l2_eps, eps, momentum, count / max(count - 1, 1),
        VECTOR=vector, HAS_W=weight is not None, HAS_B=bias is not None,
        HAS_RM=running_mean is not None, HAS_RV=running_var is not None,
        BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_P=TILING.block_p,
    )  # fmt: skip
    syn, syc, sys_ = ncm_strides(y)
    _launch(
        K.affine_kernel, geo.elementwise_grid,
        x, y, rho, sq, gain, shift, gain, shift, gain, shift,
        c, m, sxn, sxc, sxs, syn, syc, sys_, geo.n_cblocks, geo.n_sblocks, geo.n_parts,
        1.0, l2_eps, eps,
        EVAL=False, HAS_W=False, HAS_B=False,
        BLOCK_C=geo.block_c, BLOCK_S=geo.block_s, BLOCK_P=TILING.block_p,
    )  # fmt: skip
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
    """Training-mode L2BN (eqs. 2-3): three kernel launches, running statistics updated."""
    return _train_forward(
        x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale, True
    )


@train_forward.register_fake
def _train_forward_fake(x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale):
    return _train_forward(
        x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale, False
    )


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
    x, (sxn, sxc, sxs) = addressable(x)
    dy, (sdn, sdc, sds) = addressable(dy)
    n, c = x.shape[0], x.shape[1]
    m = x.numel() // (n * c)
    vector = x.dim() == 2
    grad_dtype = torch.float32 if weight is None else weight.dtype
    dweight = torch.empty((c,), dtype=grad_dtype, device=x.device)
    dbias = torch.empty((c,), dtype=grad_dtype, device=x.device)
    dx = torch.empty_like(x) if input_grad else x.new_empty((0,))
    outputs = (dx, dweight, dbias)
    if not launch:
        return outputs
    geo = geometry(n, c, m, sxc == 1)
    sums = 1 if vector else geo.n_splits * n * c
    t1, t2 = _f32(x, sums), _f32(x, sums)
    if not vector:
        _launch(
            K.grad_sums_kernel, geo.reduction_grid,
            dy, x, rho, mean, t1, t2, n, c, m, sdn, sdc, sds, sxn, sxc, sxs,
            geo.n_cblocks, geo.n_splits, geo.split_len,
            BLOCK_C=geo.block_c, BLOCK_S=geo.block_s,
        )  # fmt: skip
    block_n, block_c = _finalize_blocks(n, c)
    programs = -(-c // block_c)
    epart = _f32(x, n * programs)
    gain, qc, rc = _f32(x, c), _f32(x, c), _f32(x, c)
    _launch(
        K.backward_finalize_kernel, (programs,),
        dy, x, t1, t2, rho, row_mean, row_var, mean, invstd,
        mean if weight is None else weight, dweight, dbias, epart, gain, qc, rc,
        n, c, sdn, sdc, sxn, sxc, geo.n_splits, programs, float(m), float(n * m),
        VECTOR=vector, HAS_W=weight is not None, INPUT_GRAD=input_grad,
        BLOCK_N=block_n, BLOCK_C=block_c,
    )  # fmt: skip
    if input_grad:
        son, soc, sos = ncm_strides(dx)
        _launch(
            K.grad_input_kernel, geo.elementwise_grid,
            dy, x, dx, rho, active, epart, gain, qc, rc,
            c, m, sdn, sdc, sds, sxn, sxc, sxs, son, soc, sos,
            geo.n_cblocks, geo.n_sblocks, programs, 1.0 / (c * m) if scale else 1.0,
            BLOCK_C=geo.block_c, BLOCK_S=geo.block_s, BLOCK_P=TILING.block_p,
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
    """Gradients of training-mode L2BN from ``x`` and the forward's statistics: three
    launches (two for ``(N, C)`` input; one fewer without ``input_grad``)."""
    return _train_backward(
        dy, x, weight, rho, active, row_mean, row_var, mean, invstd, scale, input_grad, True
    )


@train_backward.register_fake
def _train_backward_fake(
    dy, x, weight, rho, active, row_mean, row_var, mean, invstd, scale, input_grad
):
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
    x, (sxn, sxc, sxs) = addressable(x)
    n, c = x.shape[0], x.shape[1]
    m = x.numel() // (n * c)
    y = torch.empty_like(x)
    if not launch:
        return y
    syn, syc, sys_ = ncm_strides(y)
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
    sq = _f32(x, n * geo.n_parts)
    _launch(
        K.row_sums_kernel, geo.reduction_grid,
        x, sq, sq, sq, sq, n, c, m, sxn, sxc, sxs, geo.n_cblocks, geo.n_splits, geo.split_len,
        WRITE_SUMS=False, BLOCK_C=geo.block_c, BLOCK_S=geo.block_s,
    )  # fmt: skip
    _launch(
        K.affine_kernel, geo.elementwise_grid,
        x, y, sq, sq, sq, sq, w, b, running_mean, running_var,
        c, m, sxn, sxc, sxs, syn, syc, sys_, geo.n_cblocks, geo.n_sblocks, geo.n_parts,
        _rho_scale(x, scale), l2_eps, eps,
        EVAL=True, BLOCK_C=geo.block_c, BLOCK_S=geo.block_s, BLOCK_P=TILING.block_p, **flags,
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
    return _eval_forward(x, running_mean, running_var, weight, bias, eps, l2_eps, scale, True)


@eval_forward.register_fake
def _eval_forward_fake(x, running_mean, running_var, weight, bias, eps, l2_eps, scale):
    return _eval_forward(x, running_mean, running_var, weight, bias, eps, l2_eps, scale, False)


OPERATORS = (train_forward, train_backward, eval_forward)
