"""The CPU backend: the fused C++ operators of ``l2bn._C``.

``l2bn._C`` is a C++ extension built by the project's install step (``make setup``; see
setup.py). It registers ``torch.ops.l2bn.train_forward``, ``train_backward`` and
``eval_forward`` for CPU tensors: each is one reduction pass and one output pass over the
input, with every ``O(N * C)`` step (statistics, coefficients, the running-statistics
update) in C++ as well. It also registers ``torch.ops.l2bn.train``: ``train_forward`` with
its autograd formula in C++ (csrc/autograd.cpp), what an eager training step runs, free of
any Python autograd object; ``eval_forward``'s autograd formula is C++ as well (its
backward: ``eval_backward``). Eager calls reach ``l2bn::train`` and ``eval_forward`` through
``l2bn._C.train`` and ``l2bn._C.eval_forward`` (csrc/entry_points.cpp), which call them
through the dispatcher without ``torch.ops``' boxed path; :func:`run` keeps ``torch.ops``
where ``__torch_function__`` must see the call.

This module registers the operators' fake (meta) implementations, so that
``torch.compile(fullgraph=True)`` and ``torch.export`` keep them in the graph; the Python
kernels of ``l2bn::differentiable_train_grads`` and ``differentiable_eval_grads`` (the
gradients ``l2bn::train`` and ``eval_forward`` take when their backward runs with
``create_graph=True`` or on a batched gradient); and :class:`FusedL2BatchNormFunction`, the
autograd function that torch.compile's training graphs record (they then show
``train_forward`` and ``train_backward``, whose running-statistics mutation the compiler
handles). ``torch.export`` of a training call records ``l2bn::train_stats`` instead, the
same kernels without running statistics (it returns the batch variance, from which the
program then updates them), with an autograd formula registered here
(:func:`l2bn._impl.operator_backward.register_train_autograd`): an exported program keeps
no Python autograd function, ``train_forward`` can carry no autograd formula (its schema
mutates the running statistics, which ``torch.library.register_autograd`` refuses), and
``l2bn::train``'s C++ autograd formula does not survive functionalization (a decomposed
program, compiled, gave no gradients).
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Any

import torch
from torch import Tensor

from l2bn._impl.composite import differentiable_train_grads
from l2bn._impl.operator_backward import register_train_autograd, train_grads
from l2bn._impl.passes import accumulation_dtype
from l2bn._impl.running import update_from_batch
from l2bn._impl.sample_scale import norm_divisor, sample_scale
from l2bn._impl.transforms import compiling, exporting

NAME = "cpu"
DESCRIPTION = "fused C++ kernels (l2bn._C)"
_FULL_PRECISION = (torch.float32, torch.float64)


def _load() -> str | None:
    """None when the operators are registered, else why not."""
    if os.environ.get("L2BN_DISABLE_FUSED", "") not in ("", "0"):
        return "switched off by L2BN_DISABLE_FUSED"
    if importlib.util.find_spec("l2bn._C") is None:
        return "l2bn._C was not built (README: Set-up)"
    try:
        importlib.import_module("l2bn._C")  # registers torch.ops.l2bn.*
    except (ImportError, OSError) as exc:
        return f"l2bn._C could not be loaded ({exc})"
    return None


UNAVAILABLE_REASON = _load()


def _channels_last_like(x: Tensor) -> bool:
    """``x`` of shape ``(N, C, *S)`` stored as ``(N, *S, C)`` (size-1 dims unconstrained)."""
    expected = 1
    for dim in (1, *range(x.dim() - 1, 1, -1), 0):
        if x.shape[dim] != 1 and x.stride(dim) != expected:
            return False
        expected *= x.shape[dim]
    return True


def _output_like(x: Tensor) -> Tensor:
    """An empty tensor in the layout the kernels write (``x``'s, or row-wise)."""
    if not (x.is_contiguous() or _channels_last_like(x)):
        x = x.contiguous()
    return torch.empty_like(x)


def _keeps_row_moments(x: Tensor, small_map_positions: int) -> bool:
    """Whether ``train_forward`` returns the ``(N, C)`` row moments of ``x``: the kernels'
    rule (csrc/layout.h, ``keeps_row_moments``), on the layout they see (``layout_of``):
    not for ``(N, C)`` input nor for channel-last maps of at most
    ``small_map_positions`` positions."""
    positions = math.prod(x.shape[2:])
    channels_last = positions == 1 or (not x.is_contiguous() and _channels_last_like(x))
    return not (channels_last and positions <= small_map_positions)


def _register_fakes() -> None:
    small_map_positions = torch.ops.l2bn.small_map_positions()

    def train_forward_fake(
        x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale
    ):
        n, c = x.shape[0], x.shape[1]
        double = {"dtype": torch.float64, "device": x.device}
        rows = (n, c) if _keeps_row_moments(x, small_map_positions) else (0,)
        return (
            _output_like(x),
            x.new_empty((n,), **double),
            x.new_empty((n,), dtype=torch.bool),
            x.new_empty(rows, **double),
            x.new_empty(rows, **double),
            x.new_empty((c,), **double),
            x.new_empty((c,), **double),
        )

    def train_backward_fake(
        dy, x, weight, rho, active, x_mean, x_var, mean, invstd, scale, input_grad
    ):
        c = x.shape[1]
        dtype = x.dtype if weight is None else weight.dtype
        bias_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        dx = _output_like(x) if input_grad else x.new_empty((0,))
        return dx, x.new_empty((c,), dtype=dtype), x.new_empty((c,), dtype=bias_dtype)

    def eval_forward_fake(x, running_mean, running_var, weight, bias, eps, l2_eps, scale):
        return _output_like(x)

    def train_fake(x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale):
        return _output_like(x)

    def train_stats_fake(x, weight, bias, eps, l2_eps, scale):
        outputs = train_forward_fake(x, weight, bias, None, None, 0.0, eps, l2_eps, scale)
        return (*outputs, x.new_empty((x.shape[1],), dtype=torch.float64))

    def eval_backward_fake(dy, x, running_mean, running_var, weight, eps, l2_eps, scale, mask):
        c = x.shape[1]
        dx = _output_like(x) if mask[0] else x.new_empty((0,))
        double = {"dtype": torch.float64}
        return (
            dx,
            x.new_empty((c if mask[1] else 0,), **double),
            x.new_empty((c if mask[2] else 0,), **double),
        )

    torch.library.register_fake("l2bn::train", train_fake)
    torch.library.register_fake("l2bn::train_forward", train_forward_fake)
    torch.library.register_fake("l2bn::train_stats", train_stats_fake)
    torch.library.register_fake("l2bn::train_backward", train_backward_fake)
    torch.library.register_fake("l2bn::eval_forward", eval_forward_fake)
    torch.library.register_fake("l2bn::eval_backward", eval_backward_fake)


def _differentiable_eval_grads(
    dy: Tensor,
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    eps: float,
    l2_eps: float,
    scale: bool,
    needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    """Kernel of ``l2bn::differentiable_eval_grads``: ``(dx, dweight, dbias)`` of eval-mode
    L2BN ``y = gamma * invstd * (x / rho[n] - mean) + beta``, an empty tensor in place of
    each gradient not asked for in ``needs``; dweight and dbias in the accumulation dtype
    (the autograd kernel, csrc/autograd.cpp, casts them to the parameters' dtypes).

    In torch operations (differentiable again, for double backward, and batched under
    ``vmap``), in the accumulation dtype (float64 on CPU). ``rho[n]`` is recomputed from
    ``x``; through it, with ``a = gamma * invstd`` and ``t[n] = sum_{c,s} a * dy * x``,
    ``dL/drho = -t / rho^2`` and ``d||x||/dx = x / ||x||`` (zero where the norm was clamped
    by ``l2_eps``), so ``dx = a * dy / rho - x * t / (rho^2 * k * ||x||)`` (``k``:
    ``sqrt(D)`` under ``scale``). Both terms and their difference stay in float64 until
    ``dx`` is rounded to the input's dtype: where ``dy`` lies along ``x`` (a loss like
    ``||y||^2 / 2``) they cancel. The per-``(n, c)`` sums ``u = sum_s dy * x`` and ``v =
    sum_s dy`` give ``t``, ``dweight = invstd * (sum_n u / rho - mean * sum_n v)`` and
    ``dbias = sum_n v``: in float64 the difference loses nothing at channel means of 1e4
    standard deviations. The running statistics get no gradient.
    """
    want_dx, want_dweight, want_dbias = needs
    acc = accumulation_dtype(x)
    n, c = x.shape[0], x.shape[1]
    spatial = tuple(range(2, x.dim()))
    xa, dya = x.to(acc), dy.to(acc)
    invstd = (running_var.to(acc) + eps).rsqrt()
    values = math.prod(x.shape[1:])
    norm = torch.linalg.vector_norm(xa, dim=tuple(range(1, x.dim())))
    rho = sample_scale(norm, values, l2_eps, scale)  # (N,)
    dy_x = dya * xa
    u = dy_x.sum(dim=spatial) if spatial else dy_x  # (N, C)
    empty = x.new_empty((0,))
    dx = dweight = dbias = empty
    if want_dx:
        gain = invstd if weight is None else weight.to(acc) * invstd
        t = torch.mv(u, gain)
        k = norm_divisor(values, scale)
        through_norm = torch.where(norm > l2_eps, t / (rho * rho * k * norm), 0.0)
        scale_dy = gain.view(1, c) / rho.view(n, 1)  # (N, C)
        dx = torch.addcmul(
            dya * scale_dy.view((n, c) + (1,) * (x.dim() - 2)),
            xa,
            through_norm.view((n,) + (1,) * (x.dim() - 1)),
            value=-1,
        ).to(x.dtype)
    if want_dweight or want_dbias:
        v = dya.sum(dim=spatial) if spatial else dya  # (N, C)
        dy_sum = v.sum(dim=0)
        if want_dweight:
            xh_dy = torch.mv(u.t(), 1.0 / rho)  # sum_n u / rho
            dweight = invstd * (xh_dy - running_mean.to(acc) * dy_sum)
        if want_dbias:
            dbias = dy_sum
    return dx, dweight, dbias


def _differentiable_train_grads(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    eps: float,
    l2_eps: float,
    scale: bool,
    needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    """Kernel of ``l2bn::differentiable_train_grads``: ``(dx, dweight, dbias)`` of
    :func:`l2bn._impl.composite.differentiable_train_grads`, an empty tensor in place of
    each gradient not asked for (the schema returns three tensors)."""
    grads = differentiable_train_grads(dy, x, weight, eps, l2_eps, scale, tuple(needs))
    return tuple(dy.new_empty((0,)) if g is None else g for g in grads)  # type: ignore[return-value]


# Kept alive for as long as the module: dropping a Library removes its registrations.
_KERNELS: list[torch.library.Library] = []

if UNAVAILABLE_REASON is None:
    _register_fakes()
    _KERNELS.append(torch.library.Library("l2bn", "IMPL"))
    _KERNELS[0].impl(
        "differentiable_train_grads", _differentiable_train_grads, "CompositeImplicitAutograd"
    )
    _KERNELS[0].impl(
        "differentiable_eval_grads", _differentiable_eval_grads, "CompositeImplicitAutograd"
    )
    # The overloads themselves: calling them skips the packet's overload resolution.
    _train = torch.ops.l2bn.train.default
    _train_stats = torch.ops.l2bn.train_stats.default
    _train_forward = torch.ops.l2bn.train_forward.default
    _train_backward = torch.ops.l2bn.train_backward.default
    register_train_autograd("l2bn::train_stats", _train_backward)
    _eval_forward = torch.ops.l2bn.eval_forward.default
    # The same two calls without torch.ops (csrc/entry_points.cpp).
    from l2bn._C import eval_forward as _eval_entry
    from l2bn._C import train as _train_entry

# True when a tensor argument overrides __torch_function__ or a TorchFunctionMode is on
# (torch.set_default_device pushes one): such calls must go through torch.ops.
_has_torch_function = torch._C._has_torch_function


def applies(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    grad: bool,
) -> bool:
    """CPU float32/float64 input and parameters (eval: running statistics without grad)."""
    if not (x.is_cpu and x.dtype in _FULL_PRECISION and x.numel()):
        return False
    for t in (running_mean, running_var, weight, bias):
        if t is not None and not t.is_cpu:
            return False
    if training:
        return True
    return not (running_mean.requires_grad or running_var.requires_grad)


def run(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    l2_eps: float,
    scale: bool,
    grad: bool,
) -> Tensor:
    """L2BN of checked arguments that :func:`applies` accepted."""
    if training:
        args = (x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale)
        if compiling():
            if exporting():
                # torch.export inlines a Python autograd function's forward and drops its
                # backward, and l2bn::train (its own C++ autograd formula, mutating the
                # running statistics) loses its gradient once the program is decomposed and
                # compiled (auto_functionalized carries none): the program records the
                # functional l2bn::train_stats, whose autograd formula is registered here,
                # then the running-statistics update (also when traced under no_grad: the
                # program may be trained later).
                y, *_saved, mean, _invstd, var = _train_stats(x, weight, bias, eps, l2_eps, scale)
                update_from_batch(running_mean, running_var, mean, var, x, momentum)
                return y
            # torch.compile's graphs record train_forward (and, for training graphs,
            # train_backward) through the Python autograd function.
            if grad:
                return FusedL2BatchNormFunction.apply(*args)
            return _train_forward(*args)[0]
        # Eager: the operator's C++ autograd kernel records the backward when one is wanted.
        if _has_torch_function((x, weight, bias, running_mean, running_var)):
            return _train(*args)
        return _train_entry(*args)
    args = (x, running_mean, running_var, weight, bias, eps, l2_eps, scale)
    # Its C++ autograd kernel records the backward when one is wanted, as l2bn::train's.
    if compiling() or _has_torch_function(args[:5]):
        return _eval_forward(*args)
    return _eval_entry(*args)


class FusedL2BatchNormFunction(torch.autograd.Function):
    """Training-mode L2BN on the fused operators. Saves ``x`` and ``O(N * C)`` statistics.

    What torch.compile traces; eager calls run ``l2bn::train``, the same formula in C++
    (csrc/autograd.cpp), and ``torch.export`` records ``l2bn::train_stats``.

    A backward run with ``create_graph=True`` returns the differentiable gradient of the
    composite (:func:`l2bn._impl.composite.differentiable_train_grads`), so that gradient
    penalties and ``gradgradcheck`` see the true second derivatives.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        momentum: float,
        eps: float,
        l2_eps: float,
        scale: bool,
    ) -> Tensor:
        y, *stats = _train_forward(
            x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale
        )
        # stats: rho, active, row mean and variance of x (empty for (N, C)), channel mean
        # and invstd. One output: the statistics are not outputs of the autograd graph.
        ctx.save_for_backward(x, weight, *stats)
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.eps, ctx.l2_eps, ctx.scale = eps, l2_eps, scale
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        return (*train_grads(ctx, dy, _train_backward), None, None, None, None, None, None)
