"""The Triton kernels of L2BN (paper eqs. 2-3), statistics in float32.

Every kernel sees the input ``x`` of shape ``(N, C, *S)`` as ``(N, C, M)`` with
``M = prod(S)`` through three element strides ``(s_n, s_c, s_s)``: NCHW rows
(``s_s = 1``), channels_last (``s_c = 1``) and ``(N, C)`` input (``M = 1``) are the same
code. A tile is ``[BLOCK_C, BLOCK_S]`` (channels x positions) of one sample; Triton
specializes strides equal to 1, so the loads are coalesced along whichever of the two is
contiguous. Offsets inside a sample are int32 (a sample holds fewer than 2**31 values);
the sample offset is int64.

Training forward (three launches):

1. ``row_sums``: per ``(n, c)`` and split of the positions, the sums of ``x - k`` and
   ``(x - k)**2`` with the per-row shift ``k``, the mean of the row's first ``BLOCK_S``
   positions (so that channel offsets do not cancel in float32), and per program the
   plain sum of squares (for ``||x[n]||``);
2. ``forward_finalize``: the ``O(N * C)`` step per block of channels. Each program
   rebuilds ``rho[n] = max(||x[n]||, l2_eps) / sqrt(D)`` (eq. 3) from the partial sums of
   squares, the row mean and variance of ``x``, then the channel mean and variance of
   ``xh = x / rho`` by Chan's pairwise combination over chunks of samples, and applies
   the running-statistics update of BatchNorm;
3. ``affine``: ``y = x * gain[c] / rho[n] + shift[c]``.

Training backward (three launches, two for ``(N, C)``): ``grad_sums`` (per-row sums of
``dy`` and of ``dy * (x - mu[c] * rho[n])``, centred element by element),
``backward_finalize`` (``dbeta``, ``dgamma``, and per block of channels the partial
projection ``e[n]`` of the l2 normalization), ``grad_input``
(``dx = P[n, c] * dy + Q[n, c] * x + R[n, c]``).

Folded (small ``N * C``, chosen by ``l2bn._impl.triton.ops.plan``): the finalize
runs inside the output kernel, one launch fewer each way, without any synchronization
between programs: ``folded_affine`` (after ``row_sums``) and ``folded_grad_input`` (after
``grad_sums``; alone for ``(N, C)``). Every program recomputes from the partials what it
needs of the finalize, in the same order as every other program, so all get the same
bits: in forward ``rho`` of every sample and the channel statistics of its own channel
block (``N * (n_parts + (2 * n_splits + 1) * BLOCK_C)`` loads), in backward the channel
sums of every channel (``e[n]`` sums over all of them: ``2 * n_splits * N * C`` loads) and
its own sample's projection. Each location of the statistics, gradients and running
statistics is written by exactly one designated program, and no program reads what
another writes: nothing depends on the order in which programs run. The finalize code
is shared: ``_forward_stats``, ``_channel_affine``, ``_store_channel_stats``,
``_grad_channel_sums``, ``_grad_coefficients``, ``_projection_rows``,
``_sample_coefficients``, and the output tiles ``_affine_tile`` and ``_grad_tile``, are
called by the standalone and the folded kernels alike.

Eval forward: ``row_sums`` (sums of squares only) then ``affine`` reading the running
statistics, or ``eval_sample`` alone when a whole sample fits in one tile.

SyncL2BatchNorm (``l2bn._impl.triton.sync``) runs the same kernels around its collectives:
``row_sums`` and ``forward_finalize`` (running statistics off) for ``rho`` and the row
moments, ``affine`` with per-``(n, c)`` coefficients (``ROWS``); ``grad_sums``, then
``grad_input`` with per-``(n, c)`` coefficients (``ROWS``). The ``O(N * C)`` steps between
them, which need every process's channel statistics, are torch operations.

Nothing here synchronizes with the host; NaN propagates as in BatchNorm (clamps are
written as ``where(v < bound, bound, v)``, which keeps NaN).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _f32(value):
    """A float argument as float32: a launch from Python passes a float as float32,
    ``torch.compile`` (inductor) as float64, which would turn the statistics into float64
    (and a loop-carried float32 into a compile error)."""
    return tl.cast(value, tl.float32)


@triton.jit
def _sample_rho(sq_ptr, n, n_parts, rho_scale, l2_eps, BLOCK_P: tl.constexpr):
    """``rho[n]`` and the 0/1 activity of sample ``n`` from its ``n_parts`` partial sums of
    squares (a scalar pair)."""
    total = tl.zeros([BLOCK_P], dtype=tl.float32)
    base = sq_ptr + n.to(tl.int64) * n_parts
    for p0 in range(0, n_parts, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        total += tl.load(base + ps, mask=ps < n_parts, other=0.0)
    norm = tl.sqrt_rn(tl.sum(total, 0))
    rho = tl.where(norm < l2_eps, l2_eps, norm) * rho_scale
    return rho, norm > l2_eps


@triton.jit
def row_sums_kernel(
    x_ptr,
    s1_ptr,
    s2_ptr,
    k_ptr,
    sq_ptr,
    N,
    C,
    M,
    sxn,
    sxc,
    sxs,
    n_cblocks,
    n_splits,
    split_len,
    WRITE_SUMS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Program ``(n, channel block, split)``: positions ``[split * split_len, ...)`` of the
    rows ``(n, c)`` of its block.

    Writes ``s1[split, n, c] = sum (x - k)``, ``s2[split, n, c] = sum (x - k)**2`` and the
    shift ``k[n, c]``, the mean of the row's first ``BLOCK_S`` positions (when
    ``WRITE_SUMS``; the finalize then reads the shifts contiguously instead of gathering
    them from ``x``), and ``sq[pid] = sum x**2`` over
    the tile, so that ``sq`` read as ``(N, n_cblocks * n_splits)`` holds each sample's
    partial squares.
    """
    pid = tl.program_id(0)
    split = pid % n_splits
    rest = pid // n_splits
    cb = rest % n_cblocks
    n = rest // n_cblocks
    cs = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    rows = x_ptr + n.to(tl.int64) * sxn + cs[:, None] * sxc
    acc_sq = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
    if WRITE_SUMS:
        # The shift k: the mean of the row's first BLOCK_S positions (the same in every
        # split), not its first value, which an outlier can put far from the row's mean:
        # the sums of x - k then cancel (rows of 1000 + N(0, 1) starting with a 0: 7e-4 of
        # the row variance). The first tile is read once more by each split.
        ss = tl.arange(0, BLOCK_S)
        first_mask = cmask[:, None] & (ss < M)[None, :]
        first = tl.load(rows + ss[None, :] * sxs, mask=first_mask, other=0.0).to(tl.float32)
        count = tl.sum(first_mask.to(tl.float32), 1, keep_dims=True)
        shift = tl.sum(first, 1, keep_dims=True) / tl.maximum(count, 1.0)
        acc1 = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
    start = split * split_len
    stop = tl.minimum(start + split_len, M)
    for s0 in range(start, stop, BLOCK_S):
        ss = s0 + tl.arange(0, BLOCK_S)
        mask = cmask[:, None] & (ss < stop)[None, :]
        v = tl.load(rows + ss[None, :] * sxs, mask=mask, other=0.0).to(tl.float32)
        acc_sq += v * v
        if WRITE_SUMS:
            d = tl.where(mask, v - shift, 0.0)
            acc1 += d
            acc2 += d * d
    if WRITE_SUMS:
        row = n.to(tl.int64) * C + cs
        out = split.to(tl.int64) * N * C + row
        tl.store(s1_ptr + out, tl.sum(acc1, 1), mask=cmask)
        tl.store(s2_ptr + out, tl.sum(acc2, 1), mask=cmask)
        tl.store(k_ptr + row[:, None], shift, mask=cmask[:, None] & (split == 0))
    tl.store(sq_ptr + pid, tl.sum(tl.sum(acc_sq, 1), 0))


@triton.jit
def _forward_stats(
    x_ptr,
    s1_ptr,
    s2_ptr,
    k_ptr,
    sq_ptr,
    rho_ptr,
    active_ptr,
    row_mean_ptr,
    row_var_ptr,
    cs,
    cmask,
    own,
    write_rho,
    write_rows,
    N,
    C,
    sxn,
    sxc,
    n_parts,
    n_splits,
    inv_m,
    rho_scale,
    l2_eps,
    VECTOR: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """The forward finalize of the channels ``cs`` over all samples, in chunks of
    ``BLOCK_N``, from the partials of ``row_sums``; returns ``(mean, var, rho[own])``.

    Per sample: ``rho`` (eq. 3) and its 0/1 activity, written where ``write_rho``; per
    row: mean and population variance of ``x`` (``shift + S1 / M`` and
    ``S2 / M - (S1 / M)**2``, written where ``write_rows`` unless ``VECTOR``, where ``x``
    itself is the row mean); per channel: ``mu`` and the population variance ``delta**2``
    of ``xh = x / rho`` (eq. 2) by Chan's combination of chunk means and sums of squared
    deviations. ``rho[own]`` is the value of that sample's chunk, picked out exactly
    (0 when ``own`` is no sample). The order of every sum depends on the constexprs and
    ``N`` only: programs that call it with the same arguments get the same bits.
    """
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    own_rho = tl.zeros([BLOCK_N], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        nmask = ns < N
        mask = nmask[:, None] & cmask[None, :]
        sq = tl.zeros([BLOCK_N], dtype=tl.float32)
        for p0 in range(0, n_parts, BLOCK_P):
            ps = p0 + tl.arange(0, BLOCK_P)
            pmask = nmask[:, None] & (ps < n_parts)[None, :]
            part = tl.load(sq_ptr + ns[:, None] * n_parts + ps[None, :], mask=pmask, other=0.0)
            sq += tl.sum(part, 1)
        norm = tl.sqrt_rn(sq)
        rho = tl.where(norm < l2_eps, l2_eps, norm) * rho_scale
        tl.store(rho_ptr + ns, rho, mask=nmask & write_rho)
        tl.store(active_ptr + ns, (norm > l2_eps).to(tl.float32), mask=nmask & write_rho)
        own_rho += tl.where(ns == own, rho, 0.0)
        # Row mean and variance of x.
        if VECTOR:
            at = x_ptr + ns.to(tl.int64)[:, None] * sxn + cs[None, :] * sxc
            row_mean = tl.load(at, mask=mask, other=0.0).to(tl.float32)
            row_var = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
        else:
            idx = ns.to(tl.int64)[:, None] * C + cs[None, :]
            t1 = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
            t2 = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
            for sp in range(0, n_splits):
                t1 += tl.load(s1_ptr + sp * N * C + idx, mask=mask, other=0.0)
                t2 += tl.load(s2_ptr + sp * N * C + idx, mask=mask, other=0.0)
            k = tl.load(k_ptr + idx, mask=mask, other=0.0)
            d = t1 * inv_m
            row_mean = k + d
            row_var = t2 * inv_m - d * d
            row_var = tl.where(row_var < 0.0, 0.0, row_var)
            tl.store(row_mean_ptr + idx, row_mean, mask=mask & write_rows)
            tl.store(row_var_ptr + idx, row_var, mask=mask & write_rows)
        # Moments of xh = x / rho in this chunk, combined with the chunks before.
        inv = 1.0 / rho
        mh = row_mean * inv[:, None]
        vh = row_var * (inv * inv)[:, None]
        count = n0 * 1.0  # samples combined so far (every earlier chunk is full)
        nb = tl.minimum(N - n0, BLOCK_N).to(tl.float32)
        chunk_mean = tl.sum(tl.where(mask, mh, 0.0), 0) / nb
        dev = tl.where(mask, mh - chunk_mean[None, :], 0.0)
        chunk_m2 = tl.sum(tl.where(mask, vh, 0.0), 0) + tl.sum(dev * dev, 0)
        total = count + nb
        delta = chunk_mean - mean
        mean += delta * (nb / total)
        m2 += chunk_m2 + delta * delta * (count * nb / total)
    return mean, m2 / N, tl.sum(own_rho, 0)


@triton.jit
def _channel_affine(
    mean, var, w_ptr, b_ptr, cs, cmask, eps, HAS_W: tl.constexpr, HAS_B: tl.constexpr
):
    """``invstd``, ``gain = gamma * invstd`` and ``shift = beta - mu * gain`` of the
    channels ``cs``."""
    invstd = 1.0 / tl.sqrt_rn(var + eps)
    gain = invstd
    if HAS_W:
        gain = gain * tl.load(w_ptr + cs, mask=cmask, other=0.0).to(tl.float32)
    shift = -mean * gain
    if HAS_B:
        shift += tl.load(b_ptr + cs, mask=cmask, other=0.0).to(tl.float32)
    return invstd, gain, shift


@triton.jit
def _store_channel_stats(
    mean,
    var,
    invstd,
    mean_ptr,
    invstd_ptr,
    rm_ptr,
    rv_ptr,
    cs,
    mask,
    factor,
    unbias,
    HAS_RM: tl.constexpr,
    HAS_RV: tl.constexpr,
):
    """Writes ``mean`` and ``invstd`` of the channels ``cs`` (where ``mask``) and applies
    BatchNorm's running-statistics update ``r += factor * (batch - r)`` there, with the
    unbiased variance ``var * unbias``."""
    tl.store(mean_ptr + cs, mean, mask=mask)
    tl.store(invstd_ptr + cs, invstd, mask=mask)
    if HAS_RM:
        rm = tl.load(rm_ptr + cs, mask=mask, other=0.0).to(tl.float32)
        rm += factor * (mean - rm)
        tl.store(rm_ptr + cs, rm.to(rm_ptr.dtype.element_ty), mask=mask)
    if HAS_RV:
        rv = tl.load(rv_ptr + cs, mask=mask, other=0.0).to(tl.float32)
        rv += factor * (var * unbias - rv)
        tl.store(rv_ptr + cs, rv.to(rv_ptr.dtype.element_ty), mask=mask)


@triton.jit
def forward_finalize_kernel(
    x_ptr,
    s1_ptr,
    s2_ptr,
    k_ptr,
    sq_ptr,
    w_ptr,
    b_ptr,
    rm_ptr,
    rv_ptr,
    rho_ptr,
    active_ptr,
    row_mean_ptr,
    row_var_ptr,
    mean_ptr,
    invstd_ptr,
    gain_ptr,
    shift_ptr,
    N,
    C,
    sxn,
    sxc,
    n_parts,
    n_splits,
    inv_m,
    rho_scale,
    l2_eps,
    eps,
    factor,
    unbias,
    VECTOR: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_RM: tl.constexpr,
    HAS_RV: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Program ``j``: channels ``[j * BLOCK_C, ...)``, all samples, in chunks of ``BLOCK_N``
    (:func:`_forward_stats`; ``rho`` written by program 0, the row moments of its channels
    by each program), then per channel ``invstd``, ``gain = gamma * invstd``,
    ``shift = beta - mu * gain`` and the running statistics."""
    inv_m, rho_scale, l2_eps = _f32(inv_m), _f32(rho_scale), _f32(l2_eps)
    eps, factor, unbias = _f32(eps), _f32(factor), _f32(unbias)
    pid = tl.program_id(0)
    cs = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    mean, var, _rho = _forward_stats(
        x_ptr, s1_ptr, s2_ptr, k_ptr, sq_ptr, rho_ptr, active_ptr, row_mean_ptr, row_var_ptr,
        cs, cmask, -1, pid == 0, True, N, C, sxn, sxc, n_parts, n_splits, inv_m, rho_scale,
        l2_eps, VECTOR, BLOCK_N, BLOCK_C, BLOCK_P,
    )  # fmt: skip
    invstd, gain, shift = _channel_affine(mean, var, w_ptr, b_ptr, cs, cmask, eps, HAS_W, HAS_B)
    tl.store(gain_ptr + cs, gain, mask=cmask)
    tl.store(shift_ptr + cs, shift, mask=cmask)
    _store_channel_stats(
        mean, var, invstd, mean_ptr, invstd_ptr, rm_ptr, rv_ptr, cs, cmask, factor, unbias,
        HAS_RM, HAS_RV,
    )  # fmt: skip


@triton.jit
def _affine_tile(
    x_ptr,
    y_ptr,
    n,
    cs,
    cmask,
    s0,
    a,
    shift,
    M,
    sxn,
    sxc,
    sxs,
    syn,
    syc,
    sys_,
    BLOCK_S: tl.constexpr,
):
    """``y = a[c] * x + shift[c]`` on the tile of sample ``n``, channels ``cs``, positions
    ``[s0, s0 + BLOCK_S)``."""
    ss = s0 + tl.arange(0, BLOCK_S)
    mask = cmask[:, None] & (ss < M)[None, :]
    v = tl.load(
        x_ptr + n.to(tl.int64) * sxn + cs[:, None] * sxc + ss[None, :] * sxs, mask=mask, other=0.0
    ).to(tl.float32)
    y = v * a[:, None] + shift[:, None]
    tl.store(
        y_ptr + n.to(tl.int64) * syn + cs[:, None] * syc + ss[None, :] * sys_,
        y.to(y_ptr.dtype.element_ty),
        mask=mask,
    )


@triton.jit
def affine_kernel(
    x_ptr,
    y_ptr,
    rho_ptr,
    sq_ptr,
    gain_ptr,
    shift_ptr,
    w_ptr,
    b_ptr,
    rm_ptr,
    rv_ptr,
    C,
    M,
    sxn,
    sxc,
    sxs,
    syn,
    syc,
    sys_,
    n_cblocks,
    n_sblocks,
    n_parts,
    rho_scale,
    l2_eps,
    eps,
    EVAL: tl.constexpr,
    ROWS: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Program ``(n, channel block, position block)``: ``y = x * gain[c] / rho[n] + shift[c]``.

    Training: ``rho``, ``gain``, ``shift`` come from ``forward_finalize``. ``EVAL``: ``rho[n]``
    from the partial sums of squares of ``row_sums``, ``gain`` and ``shift`` from the
    running statistics (the finalize folded into the output pass). ``ROWS``: ``gain`` is
    the whole coefficient ``a[n, c]``, contiguous ``(N, C)``, and ``y = a * x + shift[c]``
    (SyncL2BatchNorm's output pass, coefficients built from the global statistics).
    """
    rho_scale, l2_eps, eps = _f32(rho_scale), _f32(l2_eps), _f32(eps)
    pid = tl.program_id(0)
    sb = pid % n_sblocks
    rest = pid // n_sblocks
    cb = rest % n_cblocks
    n = rest // n_cblocks
    cs = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    if EVAL:
        rho, _active = _sample_rho(sq_ptr, n, n_parts, rho_scale, l2_eps, BLOCK_P)
        rv = tl.load(rv_ptr + cs, mask=cmask, other=1.0).to(tl.float32)
        gain = 1.0 / tl.sqrt_rn(rv + eps)
        if HAS_W:
            gain = gain * tl.load(w_ptr + cs, mask=cmask, other=0.0).to(tl.float32)
        shift = -tl.load(rm_ptr + cs, mask=cmask, other=0.0).to(tl.float32) * gain
        if HAS_B:
            shift += tl.load(b_ptr + cs, mask=cmask, other=0.0).to(tl.float32)
        a = gain / rho
    elif ROWS:
        a = tl.load(gain_ptr + n.to(tl.int64) * C + cs, mask=cmask, other=0.0)
        shift = tl.load(shift_ptr + cs, mask=cmask, other=0.0)
    else:
        rho = tl.load(rho_ptr + n)
        gain = tl.load(gain_ptr + cs, mask=cmask, other=0.0)
        shift = tl.load(shift_ptr + cs, mask=cmask, other=0.0)
        a = gain / rho
    _affine_tile(
        x_ptr, y_ptr, n, cs, cmask, sb * BLOCK_S, a, shift, M, sxn, sxc, sxs, syn, syc, sys_,
        BLOCK_S,
    )  # fmt: skip


@triton.jit
def folded_affine_kernel(
    x_ptr,
    y_ptr,
    s1_ptr,
    s2_ptr,
    k_ptr,
    sq_ptr,
    w_ptr,
    b_ptr,
    rm_ptr,
    rv_ptr,
    rho_ptr,
    active_ptr,
    row_mean_ptr,
    row_var_ptr,
    mean_ptr,
    invstd_ptr,
    N,
    C,
    M,
    sxn,
    sxc,
    sxs,
    syn,
    syc,
    sys_,
    n_cblocks,
    n_groups,
    group_len,
    n_parts,
    n_splits,
    inv_m,
    rho_scale,
    l2_eps,
    eps,
    factor,
    unbias,
    VECTOR: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_RM: tl.constexpr,
    HAS_RV: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Program ``(n, channel block, group)``: the training output pass with the forward
    finalize folded in (small ``N * C``; ``l2bn._impl.triton.ops.plan``).

    Every program recomputes, from the partials of ``row_sums``, ``rho`` of every sample
    and the channel statistics of its own channels (:func:`_forward_stats`: the same code
    and order in every program, so the same bits), then writes
    ``y = x * gain[c] / rho[n] + shift[c]`` on the positions
    ``[group * group_len, ...)`` of its rows. Each location of the saved statistics is
    written by one program: ``rho`` and the activity by program 0; the row moments,
    ``mean``, ``invstd`` and the running statistics of a channel block by that block's
    program ``(0, block, 0)``. No program reads what another writes.
    """
    inv_m, rho_scale, l2_eps = _f32(inv_m), _f32(rho_scale), _f32(l2_eps)
    eps, factor, unbias = _f32(eps), _f32(factor), _f32(unbias)
    pid = tl.program_id(0)
    group = pid % n_groups
    rest = pid // n_groups
    cb = rest % n_cblocks
    n = rest // n_cblocks
    cs = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    leader = (n == 0) & (group == 0)
    mean, var, rho = _forward_stats(
        x_ptr, s1_ptr, s2_ptr, k_ptr, sq_ptr, rho_ptr, active_ptr, row_mean_ptr, row_var_ptr,
        cs, cmask, n, pid == 0, leader, N, C, sxn, sxc, n_parts, n_splits, inv_m, rho_scale,
        l2_eps, VECTOR, BLOCK_N, BLOCK_C, BLOCK_P,
    )  # fmt: skip
    invstd, gain, shift = _channel_affine(mean, var, w_ptr, b_ptr, cs, cmask, eps, HAS_W, HAS_B)
    _store_channel_stats(
        mean, var, invstd, mean_ptr, invstd_ptr, rm_ptr, rv_ptr, cs, cmask & leader, factor,
        unbias, HAS_RM, HAS_RV,
    )  # fmt: skip
    a = gain / rho
    start = group * group_len
    stop = tl.minimum(start + group_len, M)
    for s0 in range(start, stop, BLOCK_S):
        _affine_tile(
            x_ptr, y_ptr, n, cs, cmask, s0, a, shift, M, sxn, sxc, sxs, syn, syc, sys_, BLOCK_S
        )


@triton.jit
def eval_sample_kernel(
    x_ptr,
    y_ptr,
    w_ptr,
    b_ptr,
    rm_ptr,
    rv_ptr,
    C,
    M,
    sxn,
    sxc,
    sxs,
    syn,
    syc,
    sys_,
    rho_scale,
    l2_eps,
    eps,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Program ``n``: eval L2BN of the whole sample ``n`` in one tile (one read, one write)."""
    rho_scale, l2_eps, eps = _f32(rho_scale), _f32(l2_eps), _f32(eps)
    n = tl.program_id(0)
    cs = tl.arange(0, BLOCK_C)
    cmask = cs < C
    ss = tl.arange(0, BLOCK_S)
    mask = cmask[:, None] & (ss < M)[None, :]
    v = tl.load(
        x_ptr + n.to(tl.int64) * sxn + cs[:, None] * sxc + ss[None, :] * sxs, mask=mask, other=0.0
    ).to(tl.float32)
    norm = tl.sqrt_rn(tl.sum(tl.sum(v * v, 1), 0))
    rho = tl.where(norm < l2_eps, l2_eps, norm) * rho_scale
    rv = tl.load(rv_ptr + cs, mask=cmask, other=1.0).to(tl.float32)
    gain = 1.0 / tl.sqrt_rn(rv + eps)
    if HAS_W:
        gain = gain * tl.load(w_ptr + cs, mask=cmask, other=0.0).to(tl.float32)
    shift = -tl.load(rm_ptr + cs, mask=cmask, other=0.0).to(tl.float32) * gain
    if HAS_B:
        shift += tl.load(b_ptr + cs, mask=cmask, other=0.0).to(tl.float32)
    y = v * (gain / rho)[:, None] + shift[:, None]
    tl.store(
        y_ptr + n.to(tl.int64) * syn + cs[:, None] * syc + ss[None, :] * sys_,
        y.to(y_ptr.dtype.element_ty),
        mask=mask,
    )


@triton.jit
def grad_sums_kernel(
    dy_ptr,
    x_ptr,
    rho_ptr,
    mean_ptr,
    t1_ptr,
    t2_ptr,
    N,
    C,
    M,
    sdn,
    sdc,
    sds,
    sxn,
    sxc,
    sxs,
    n_cblocks,
    n_splits,
    split_len,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Program ``(n, channel block, split)``: ``t1[split, n, c] = sum dy`` and
    ``t2[split, n, c] = sum dy * (x - mu[c] * rho[n])`` (``rho[n] * sum dy * (xh - mu)``),
    centred element by element so that ``dgamma`` needs no difference of large sums."""
    pid = tl.program_id(0)
    split = pid % n_splits
    rest = pid // n_splits
    cb = rest % n_cblocks
    n = rest // n_cblocks
    cs = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    centre = tl.load(mean_ptr + cs, mask=cmask, other=0.0) * tl.load(rho_ptr + n)
    dy_rows = dy_ptr + n.to(tl.int64) * sdn + cs[:, None] * sdc
    x_rows = x_ptr + n.to(tl.int64) * sxn + cs[:, None] * sxc
    acc1 = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
    start = split * split_len
    stop = tl.minimum(start + split_len, M)
    for s0 in range(start, stop, BLOCK_S):
        ss = s0 + tl.arange(0, BLOCK_S)
        mask = cmask[:, None] & (ss < stop)[None, :]
        g = tl.load(dy_rows + ss[None, :] * sds, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(x_rows + ss[None, :] * sxs, mask=mask, other=0.0).to(tl.float32)
        acc1 += g
        acc2 += tl.where(mask, g * (v - centre[:, None]), 0.0)
    out = split.to(tl.int64) * N * C + n * C + cs
    tl.store(t1_ptr + out, tl.sum(acc1, 1), mask=cmask)
    tl.store(t2_ptr + out, tl.sum(acc2, 1), mask=cmask)


@triton.jit
def _grad_rows(
    dy_ptr,
    x_ptr,
    t1_ptr,
    t2_ptr,
    ns,
    cs,
    mask,
    rho,
    mu,
    N,
    C,
    sdn,
    sdc,
    sxn,
    sxc,
    n_splits,
    VECTOR: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Row sums ``(T1, T2)`` of a ``[BLOCK_N, BLOCK_C]`` chunk (read from ``dy`` and ``x``
    directly for ``(N, C)`` input, where a row is one value)."""
    if VECTOR:
        g = tl.load(
            dy_ptr + ns.to(tl.int64)[:, None] * sdn + cs[None, :] * sdc, mask=mask, other=0.0
        ).to(tl.float32)
        v = tl.load(
            x_ptr + ns.to(tl.int64)[:, None] * sxn + cs[None, :] * sxc, mask=mask, other=0.0
        ).to(tl.float32)
        t1 = g
        t2 = tl.where(mask, g * (v - mu[None, :] * rho[:, None]), 0.0)
    else:
        idx = ns.to(tl.int64)[:, None] * C + cs[None, :]
        t1 = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
        t2 = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
        for sp in range(0, n_splits):
            t1 += tl.load(t1_ptr + sp * N * C + idx, mask=mask, other=0.0)
            t2 += tl.load(t2_ptr + sp * N * C + idx, mask=mask, other=0.0)
    return t1, t2


@triton.jit
def _grad_channel_sums(
    dy_ptr,
    x_ptr,
    t1_ptr,
    t2_ptr,
    rho_ptr,
    cs,
    cmask,
    mu,
    N,
    C,
    sdn,
    sdc,
    sxn,
    sxc,
    n_splits,
    VECTOR: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """``(dbeta, sum_n T2 / rho[n])`` of the channels ``cs``: sums over all samples, in
    chunks of ``BLOCK_N``."""
    dbeta = tl.zeros([BLOCK_C], dtype=tl.float32)
    dgs = tl.zeros([BLOCK_C], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        nmask = ns < N
        mask = nmask[:, None] & cmask[None, :]
        rho = tl.load(rho_ptr + ns, mask=nmask, other=1.0)
        t1, t2 = _grad_rows(
            dy_ptr, x_ptr, t1_ptr, t2_ptr, ns, cs, mask, rho, mu, N, C, sdn, sdc, sxn, sxc,
            n_splits, VECTOR, BLOCK_N, BLOCK_C,
        )  # fmt: skip
        dbeta += tl.sum(t1, 0)
        dgs += tl.sum(tl.where(mask, t2 / rho[:, None], 0.0), 0)
    return dbeta, dgs


@triton.jit
def _grad_coefficients(dbeta, dgs, mu, invstd, w_ptr, cs, cmask, m_f, count, HAS_W: tl.constexpr):
    """From the channel sums: ``dgamma = invstd * sum_n T2 / rho``, ``gain = gamma *
    invstd``, the factors ``k_mean = dbeta * M / K`` and ``k_z = dgamma / K`` of the
    projection, and ``qc = gain * dgamma * invstd / K``,
    ``rc = gain * (dgamma * invstd * mu - dbeta) / K`` of ``grad_input`` (``K = N * M``)."""
    dgamma = invstd * dgs
    gain = invstd
    if HAS_W:
        gain = gain * tl.load(w_ptr + cs, mask=cmask, other=0.0).to(tl.float32)
    k_mean = dbeta * m_f / count
    k_z = dgamma / count
    qc = gain * dgamma * invstd / count
    rc = gain * (dgamma * invstd * mu - dbeta) / count
    return dgamma, gain, k_mean, k_z, qc, rc


@triton.jit
def _projection_rows(
    dy_ptr,
    x_ptr,
    t1_ptr,
    t2_ptr,
    rho_ptr,
    row_mean_ptr,
    row_var_ptr,
    ns,
    nmask,
    cs,
    cmask,
    mu,
    invstd,
    gain,
    k_mean,
    k_z,
    N,
    C,
    sdn,
    sdc,
    sxn,
    sxc,
    n_splits,
    m_f,
    VECTOR: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """The partial projection of the samples ``ns`` over the channels ``cs``:
    ``sum_c gain * (sum_s xh dy - k_mean * m - k_z * sum_s xh z)``, with ``m``, ``v`` the
    row mean and variance of ``xh`` (a ``[BLOCK_N]`` vector)."""
    mask = nmask[:, None] & cmask[None, :]
    rho = tl.load(rho_ptr + ns, mask=nmask, other=1.0)
    inv = 1.0 / rho
    t1, t2 = _grad_rows(
        dy_ptr, x_ptr, t1_ptr, t2_ptr, ns, cs, mask, rho, mu, N, C, sdn, sdc, sxn, sxc,
        n_splits, VECTOR, BLOCK_N, BLOCK_C,
    )  # fmt: skip
    if VECTOR:
        xv = tl.load(
            x_ptr + ns.to(tl.int64)[:, None] * sxn + cs[None, :] * sxc, mask=mask, other=0.0
        ).to(tl.float32)
        m = xv * inv[:, None]
        v = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
    else:
        idx = ns.to(tl.int64)[:, None] * C + cs[None, :]
        m = tl.load(row_mean_ptr + idx, mask=mask, other=0.0) * inv[:, None]
        v = tl.load(row_var_ptr + idx, mask=mask, other=0.0) * (inv * inv)[:, None]
    xh_dy = t2 * inv[:, None] + mu[None, :] * t1
    xh_z = invstd[None, :] * m_f * (v + m * (m - mu[None, :]))
    term = gain[None, :] * (xh_dy - k_mean[None, :] * m - k_z[None, :] * xh_z)
    return tl.sum(tl.where(mask, term, 0.0), 1)


@triton.jit
def backward_finalize_kernel(
    dy_ptr,
    x_ptr,
    t1_ptr,
    t2_ptr,
    rho_ptr,
    row_mean_ptr,
    row_var_ptr,
    mean_ptr,
    invstd_ptr,
    w_ptr,
    dw_ptr,
    db_ptr,
    epart_ptr,
    gain_ptr,
    qc_ptr,
    rc_ptr,
    N,
    C,
    sdn,
    sdc,
    sxn,
    sxc,
    n_splits,
    n_programs,
    m_f,
    count,
    VECTOR: tl.constexpr,
    HAS_W: tl.constexpr,
    INPUT_GRAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Program ``j``: channels ``[j * BLOCK_C, ...)`` over all samples.

    Pass 1 (:func:`_grad_channel_sums`): ``dbeta = sum_n T1`` and
    ``dgamma = invstd * sum_n T2 / rho[n]`` (written to ``db`` and ``dw``, in their
    dtypes). Pass 2 (``INPUT_GRAD``): the partial projection ``epart[n, j]``
    (:func:`_projection_rows`) and the per-channel coefficients ``gain``, ``qc``, ``rc`` of
    ``grad_input`` (:func:`_grad_coefficients`).
    """
    m_f, count = _f32(m_f), _f32(count)
    pid = tl.program_id(0)
    cs = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    mu = tl.load(mean_ptr + cs, mask=cmask, other=0.0)
    invstd = tl.load(invstd_ptr + cs, mask=cmask, other=0.0)
    dbeta, dgs = _grad_channel_sums(
        dy_ptr, x_ptr, t1_ptr, t2_ptr, rho_ptr, cs, cmask, mu, N, C, sdn, sdc, sxn, sxc,
        n_splits, VECTOR, BLOCK_N, BLOCK_C,
    )  # fmt: skip
    dgamma, gain, k_mean, k_z, qc, rc = _grad_coefficients(
        dbeta, dgs, mu, invstd, w_ptr, cs, cmask, m_f, count, HAS_W
    )
    if HAS_W:
        tl.store(dw_ptr + cs, dgamma.to(dw_ptr.dtype.element_ty), mask=cmask)
    tl.store(db_ptr + cs, dbeta.to(db_ptr.dtype.element_ty), mask=cmask)
    if INPUT_GRAD:
        for n0 in range(0, N, BLOCK_N):
            ns = n0 + tl.arange(0, BLOCK_N)
            nmask = ns < N
            part = _projection_rows(
                dy_ptr, x_ptr, t1_ptr, t2_ptr, rho_ptr, row_mean_ptr, row_var_ptr, ns, nmask,
                cs, cmask, mu, invstd, gain, k_mean, k_z, N, C, sdn, sdc, sxn, sxc, n_splits,
                m_f, VECTOR, BLOCK_N, BLOCK_C,
            )  # fmt: skip
            tl.store(epart_ptr + ns.to(tl.int64) * n_programs + pid, part, mask=nmask)
        tl.store(gain_ptr + cs, gain, mask=cmask)
        tl.store(qc_ptr + cs, qc, mask=cmask)
        tl.store(rc_ptr + cs, rc, mask=cmask)


@triton.jit
def _sample_coefficients(gain, qc, rc, e, rho, active, proj_scale):
    """``P = gain / rho``, ``Q = -(qc + proj) / rho**2``, ``R = rc / rho`` of one sample,
    where ``proj = e * proj_scale`` if its norm was not clamped (eq. 3's projection;
    ``proj_scale = 1 / D`` for the scaled form) and 0 otherwise."""
    proj = tl.where(active > 0.0, e * proj_scale, 0.0)
    inv = 1.0 / rho
    return gain * inv, -(qc + proj) * (inv * inv), rc * inv


@triton.jit
def _grad_tile(
    dy_ptr,
    x_ptr,
    dx_ptr,
    n,
    cs,
    cmask,
    s0,
    p,
    q,
    r,
    M,
    sdn,
    sdc,
    sds,
    sxn,
    sxc,
    sxs,
    son,
    soc,
    sos,
    BLOCK_S: tl.constexpr,
):
    """``dx = p[c] * dy + q[c] * x + r[c]`` on the tile of sample ``n``, channels ``cs``,
    positions ``[s0, s0 + BLOCK_S)``."""
    ss = s0 + tl.arange(0, BLOCK_S)
    mask = cmask[:, None] & (ss < M)[None, :]
    g = tl.load(
        dy_ptr + n.to(tl.int64) * sdn + cs[:, None] * sdc + ss[None, :] * sds, mask=mask, other=0.0
    ).to(tl.float32)
    v = tl.load(
        x_ptr + n.to(tl.int64) * sxn + cs[:, None] * sxc + ss[None, :] * sxs, mask=mask, other=0.0
    ).to(tl.float32)
    dx = p[:, None] * g + q[:, None] * v + r[:, None]
    tl.store(
        dx_ptr + n.to(tl.int64) * son + cs[:, None] * soc + ss[None, :] * sos,
        dx.to(dx_ptr.dtype.element_ty),
        mask=mask,
    )


@triton.jit
def grad_input_kernel(
    dy_ptr,
    x_ptr,
    dx_ptr,
    rho_ptr,
    active_ptr,
    epart_ptr,
    gain_ptr,
    qc_ptr,
    rc_ptr,
    C,
    M,
    sdn,
    sdc,
    sds,
    sxn,
    sxc,
    sxs,
    son,
    soc,
    sos,
    n_cblocks,
    n_sblocks,
    n_parts,
    proj_scale,
    ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Program ``(n, channel block, position block)``: ``dx = P * dy + Q * x + R`` with
    the coefficients of :func:`_sample_coefficients`, ``e[n]`` being the sum of the
    ``n_parts`` partial projections of ``backward_finalize``.

    ``ROWS``: ``P``, ``Q``, ``R`` are read whole from contiguous ``(N, C)`` arrays at
    ``gain``, ``qc``, ``rc`` (SyncL2BatchNorm's input gradient, whose coefficients hold
    the channel sums of every process)."""
    proj_scale = _f32(proj_scale)
    pid = tl.program_id(0)
    sb = pid % n_sblocks
    rest = pid // n_sblocks
    cb = rest % n_cblocks
    n = rest // n_cblocks
    cs = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    if ROWS:
        row = n.to(tl.int64) * C + cs
        p = tl.load(gain_ptr + row, mask=cmask, other=0.0)
        q = tl.load(qc_ptr + row, mask=cmask, other=0.0)
        r = tl.load(rc_ptr + row, mask=cmask, other=0.0)
    else:
        total = tl.zeros([BLOCK_P], dtype=tl.float32)
        base = epart_ptr + n.to(tl.int64) * n_parts
        for p0 in range(0, n_parts, BLOCK_P):
            ps = p0 + tl.arange(0, BLOCK_P)
            total += tl.load(base + ps, mask=ps < n_parts, other=0.0)
        p, q, r = _sample_coefficients(
            tl.load(gain_ptr + cs, mask=cmask, other=0.0),
            tl.load(qc_ptr + cs, mask=cmask, other=0.0),
            tl.load(rc_ptr + cs, mask=cmask, other=0.0),
            tl.sum(total, 0),
            tl.load(rho_ptr + n),
            tl.load(active_ptr + n),
            proj_scale,
        )
    _grad_tile(
        dy_ptr, x_ptr, dx_ptr, n, cs, cmask, sb * BLOCK_S, p, q, r, M, sdn, sdc, sds, sxn, sxc,
        sxs, son, soc, sos, BLOCK_S,
    )  # fmt: skip


@triton.jit
def folded_grad_input_kernel(
    dy_ptr,
    x_ptr,
    dx_ptr,
    t1_ptr,
    t2_ptr,
    rho_ptr,
    active_ptr,
    row_mean_ptr,
    row_var_ptr,
    mean_ptr,
    invstd_ptr,
    w_ptr,
    dw_ptr,
    db_ptr,
    N,
    C,
    M,
    sdn,
    sdc,
    sds,
    sxn,
    sxc,
    sxs,
    son,
    soc,
    sos,
    n_cblocks,
    n_groups,
    group_len,
    n_splits,
    m_f,
    count,
    proj_scale,
    VECTOR: tl.constexpr,
    HAS_W: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Program ``(n, channel block, group)``: the input gradient with the backward
    finalize folded in (small ``N * C``; ``l2bn._impl.triton.ops.plan``).

    ``e[n]`` sums over every channel, so every program walks all channels in blocks of
    ``BLOCK_C`` (in the same order in every program): the channel sums of
    :func:`_grad_channel_sums` over all samples, the coefficients of
    :func:`_grad_coefficients`, and sample ``n``'s share of the projection
    (:func:`_projection_rows` on one row); it keeps the coefficients of its own channel
    block, then writes ``dx = P * dy + Q * x + R`` on the positions
    ``[group * group_len, ...)`` of its rows. ``dweight`` and ``dbias`` are written by
    program 0 only.
    """
    m_f, count, proj_scale = _f32(m_f), _f32(count), _f32(proj_scale)
    pid = tl.program_id(0)
    group = pid % n_groups
    rest = pid // n_groups
    cb = rest % n_cblocks
    n = rest // n_cblocks
    first = pid == 0
    mine = cb * BLOCK_C
    ns = n + tl.arange(0, 1)
    nmask = ns < N
    e = tl.zeros([1], dtype=tl.float32)
    gain_own = tl.zeros([BLOCK_C], dtype=tl.float32)
    qc_own = tl.zeros([BLOCK_C], dtype=tl.float32)
    rc_own = tl.zeros([BLOCK_C], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        cmask = cs < C
        mu = tl.load(mean_ptr + cs, mask=cmask, other=0.0)
        invstd = tl.load(invstd_ptr + cs, mask=cmask, other=0.0)
        dbeta, dgs = _grad_channel_sums(
            dy_ptr, x_ptr, t1_ptr, t2_ptr, rho_ptr, cs, cmask, mu, N, C, sdn, sdc, sxn, sxc,
            n_splits, VECTOR, BLOCK_N, BLOCK_C,
        )  # fmt: skip
        dgamma, gain, k_mean, k_z, qc, rc = _grad_coefficients(
            dbeta, dgs, mu, invstd, w_ptr, cs, cmask, m_f, count, HAS_W
        )
        if HAS_W:
            tl.store(dw_ptr + cs, dgamma.to(dw_ptr.dtype.element_ty), mask=cmask & first)
        tl.store(db_ptr + cs, dbeta.to(db_ptr.dtype.element_ty), mask=cmask & first)
        e += _projection_rows(
            dy_ptr, x_ptr, t1_ptr, t2_ptr, rho_ptr, row_mean_ptr, row_var_ptr, ns, nmask, cs,
            cmask, mu, invstd, gain, k_mean, k_z, N, C, sdn, sdc, sxn, sxc, n_splits, m_f,
            VECTOR, 1, BLOCK_C,
        )  # fmt: skip
        own = c0 == mine
        gain_own = tl.where(own, gain, gain_own)
        qc_own = tl.where(own, qc, qc_own)
        rc_own = tl.where(own, rc, rc_own)
    p, q, r = _sample_coefficients(
        gain_own, qc_own, rc_own, tl.sum(e, 0), tl.load(rho_ptr + n), tl.load(active_ptr + n),
        proj_scale,
    )  # fmt: skip
    cs = mine + tl.arange(0, BLOCK_C)
    cmask = cs < C
    start = group * group_len
    stop = tl.minimum(start + group_len, M)
    for s0 in range(start, stop, BLOCK_S):
        _grad_tile(
            dy_ptr, x_ptr, dx_ptr, n, cs, cmask, s0, p, q, r, M, sdn, sdc, sds, sxn, sxc, sxs,
            son, soc, sos, BLOCK_S,
        )  # fmt: skip


__all__ = [
    "affine_kernel",
    "backward_finalize_kernel",
    "eval_sample_kernel",
    "folded_affine_kernel",
    "folded_grad_input_kernel",
    "forward_finalize_kernel",
    "grad_input_kernel",
    "grad_sums_kernel",
    "row_sums_kernel",
    "triton",
]
