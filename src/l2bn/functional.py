"""Functional L2BN, mirroring :func:`torch.nn.functional.batch_norm`.

L2BN (paper eqs. 1-3): l2-normalize each sample's whole feature (all channels and
positions), optionally rescaled by ``sqrt(D)``, then batch-normalize per channel.
"""

from __future__ import annotations

import math
import numbers
import sys

import torch
from torch import Tensor

from l2bn._impl import dispatch

DEFAULT_L2_EPS = 1e-12
"""The epsilon of eq. (3); the same default as :func:`torch.nn.functional.normalize`."""


def validate_input(
    input: Tensor,
    num_features: int | None,
    training: bool,
    expected_dims: tuple[int, ...] | None = None,
) -> None:
    """Raise a clear error for input that L2BN cannot normalize (see README, "Bad input").

    ``input`` must be an ``(N, C, *)`` floating-point tensor (``expected_dims``: its allowed
    numbers of dimensions), with ``num_features`` channels unless that is None, and, when
    ``training``, more than one value per channel.

    Raises:
        TypeError: a non-tensor, or an integer, bool or complex tensor.
        ValueError: a wrong number of dimensions or channels, or one value per channel in
            training.
    """
    # Each property read once: this runs on every call of a layer.
    if not isinstance(input, Tensor):
        raise TypeError(f"l2bn: expected a torch.Tensor, got {type(input).__name__}")
    shape = input.shape
    dim = len(shape)
    if expected_dims is not None and dim not in expected_dims:
        dims = " or ".join(f"{d}D" for d in expected_dims)
        raise ValueError(f"l2bn: expected {dims} input (got {dim}D input)")
    if dim < 2:
        raise ValueError(f"l2bn: expected input of shape (N, C, *), got {dim}D input")
    dtype = input.dtype
    if not dtype.is_floating_point:
        if dtype.is_complex:
            raise TypeError(f"l2bn: complex input ({dtype}) is not supported")
        raise TypeError(
            f"l2bn: expected a floating-point input, got {dtype}; "
            "convert it first, e.g. input.float()"
        )
    if num_features is not None and shape[1] != num_features:
        raise ValueError(
            f"l2bn: expected input with {num_features} channels (dim 1), "
            f"got {shape[1]} (input shape {tuple(shape)})"
        )
    if training:
        numel = input.numel()
        if numel > 0 and numel // shape[1] == 1:
            raise ValueError(
                "l2bn: expected more than 1 value per channel when training, "
                f"got input size {tuple(shape)}"
            )


def checked_l2_eps(l2_eps: float) -> float:
    """``l2_eps`` (eq. 3's lower bound of a sample's norm) as a float.

    Raises:
        ValueError: a negative, NaN or infinite ``l2_eps`` (a NaN bound would be ignored by
            the clamp, an infinite one would zero every sample).
    """
    value = float(l2_eps)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"l2bn: l2_eps must be a finite non-negative number, got {l2_eps}")
    return value


def checked_scale(scale: bool) -> bool:
    """``scale`` (the ``sqrt(D)`` form of eq. 3, or plain ``x / ||x||``) as a bool.

    Raises:
        TypeError: anything but a bool (a NumPy bool or a one-value bool tensor included)
            or the integers 0 and 1 (``bool("no")`` would be True: a string, silently the
            scaled form).
    """
    if isinstance(scale, bool):
        return scale
    if isinstance(scale, numbers.Integral) and scale in (0, 1):
        return bool(scale)
    numpy = sys.modules.get("numpy")  # a NumPy bool exists only once NumPy is imported
    if numpy is not None and isinstance(scale, numpy.bool_):
        return bool(scale)
    if isinstance(scale, Tensor) and scale.dtype == torch.bool and scale.numel() == 1:
        return bool(scale)
    raise TypeError(f"l2bn: scale must be True or False, got {scale!r}")


def _check_floating(name: str, t: Tensor | None) -> None:
    """Refuse an integer, bool or complex per-channel tensor, whichever backend would run:
    the fused kernels raise on one, the PyTorch operations would promote it silently."""
    if t is not None and not t.dtype.is_floating_point:
        raise TypeError(
            f"l2bn: {name} must be a floating-point tensor, got {t.dtype} "
            "(e.g. torch.zeros(C) and torch.ones(C))"
        )


def _check_param(name: str, t: Tensor | None, c: int) -> None:
    if t is not None and (t.numel() != c or t.dim() != 1):
        raise ValueError(
            f"l2bn: {name} should contain {c} elements in one dimension, not shape {tuple(t.shape)}"
        )


def l2_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    l2_eps: float = DEFAULT_L2_EPS,
    scale: bool = True,
) -> Tensor:
    r"""L2BN of ``input`` (Wang et al., https://arxiv.org/abs/2207.02625, eqs. 1-3).

    Each sample is divided by ``rho_n = max(||x_n||_2, l2_eps) / sqrt(D)`` (``D`` values per
    sample; ``scale=False`` drops the ``sqrt(D)``), then batch-normalized per channel as
    :func:`torch.nn.functional.batch_norm` does. Training mode uses the batch statistics of
    the normalized input and updates ``running_mean`` / ``running_var`` in place (unbiased
    variance, weight ``momentum``); eval mode uses the running statistics.

    Args:
        input: ``(N, C, *)`` floating-point tensor (float16/bfloat16 statistics are
            accumulated in float32).
        running_mean, running_var: ``(C,)`` tensors, or None (required in eval mode).
            Unlike BatchNorm, which refuses them, running statistics that require grad are
            accepted on every backend: eval mode passes them their gradient, training
            mode updates them in place outside the autograd graph.
        weight, bias: ``(C,)`` affine parameters, or None.

            Unlike :func:`torch.nn.functional.batch_norm`, which raises for most mixes of
            dtypes (it accepts float16/bfloat16 input with float32 parameters only), these
            four may have any floating dtype, also one other than ``input``'s (float64
            input with float32 parameters, float32 input with float64 or float16 running
            statistics): the output keeps ``input``'s dtype, the running statistics are
            updated in their own dtype and the parameters' gradients come in theirs.
        training: use batch statistics (and update the running ones).
        momentum: weight of this batch in the running statistics.
        eps: added to the variance (eq. 2).
        l2_eps: lower bound of each sample's norm (eq. 3).
        scale: the scaled form of eq. 3 (default) or plain ``x / ||x||``.

    Returns:
        Tensor of the shape, dtype and memory layout of ``input``.

    Raises:
        ValueError: wrong shapes of the per-channel tensors, one running statistic without
            the other, missing running statistics in eval mode, ``eps <= 0`` or one value
            per channel in training, ``eps < 0`` in eval mode (as
            :func:`torch.nn.functional.batch_norm`), a negative, NaN or infinite ``l2_eps``.
        TypeError: non-tensor, integer, bool or complex input; integer, bool or complex
            running statistics, weight or bias; a ``momentum`` or ``eps`` that is not a
            number.

    Example::

        >>> x = torch.randn(8, 4, 5, 5)
        >>> rm, rv = torch.zeros(4), torch.ones(4)
        >>> y = l2bn.l2_batch_norm(x, rm, rv, training=True)
    """
    validate_input(input, None, training)
    c = input.shape[1]
    for name, t in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        _check_param(name, t, c)
    if (running_mean is None) != (running_var is None):
        raise ValueError(
            "l2bn: running_mean and running_var must either both be None or neither be None"
        )
    if not training and running_mean is None:
        raise ValueError("l2bn: running_mean and running_var are required when training=False")
    for name, t in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        _check_floating(name, t)
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(
            f"l2bn: momentum must be a number (this batch's weight in the running "
            f"statistics), got {momentum!r}; for a cumulative average use the layers' "
            "momentum=None, as torch's BatchNorm"
        )
    l2_eps = checked_l2_eps(l2_eps)
    scale = checked_scale(scale)

    return checked_l2_batch_norm(
        input, running_mean, running_var, weight, bias, training, momentum, eps, l2_eps, scale
    )


def check_eps(eps: float, training: bool) -> None:
    """Refuse BatchNorm's ``eps`` where torch's rule (F.batch_norm) does: a positive eps in
    training, a non-negative one in eval (a negative eps in eval would make the output NaN
    wherever running_var < -eps).

    Raises:
        TypeError: ``eps`` is not a number.
        ValueError: ``eps <= 0`` in training, ``eps < 0`` in eval.
    """
    try:
        refused = eps <= 0 if training else eps < 0
    except TypeError:  # a string, None, ...: checked here only, off the path of every call
        raise TypeError(f"l2bn: eps must be a number, got {eps!r}") from None
    if refused:
        state = "positive during training" if training else "non-negative"
        raise ValueError(f"l2bn: eps must be {state}, got {eps}")


def checked_l2_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    l2_eps: float,
    scale: bool,
) -> Tensor:
    """:func:`l2_batch_norm` on arguments already checked (by it, or by a layer that owns
    the parameters and has validated ``input``)."""
    check_eps(eps, training)
    if input.numel() == 0:
        # As BatchNorm: an empty input (no sample, or samples of no value, e.g. (N, C, 0, W))
        # gives an empty output and leaves the running statistics alone.
        return _empty_output(input, weight, bias)

    return dispatch.l2_batch_norm(
        input, running_mean, running_var, weight, bias, training, momentum, eps, l2_eps, scale
    )


def _empty_output(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    out = x.clone()
    # Keep the autograd graph connected to the parameters, as BatchNorm does.
    for p in (weight, bias):
        if p is not None and p.requires_grad:
            out = out + 0 * p.sum().to(out.dtype)
    return out
