"""Which implementation runs L2BN, and switches for it (in the manner of ``torch.backends``).

Backends (tried in this order; the first that is usable and applies to a call runs it):

* ``"triton"``: Triton kernels for CUDA tensors (float32, float16, bfloat16), registered as
  ``torch.ops.l2bn_triton.*``; with ``TRITON_INTERPRET=1`` and ``prefer("triton")`` they run
  on CPU tensors in Triton's interpreter (how the tests check them without a GPU);
* ``"cpu"``: the fused C++ operators of ``l2bn._C`` (CPU, float32/float64; built by
  ``make setup``); eval mode with autograd recording goes to the next backend;
* ``"pytorch"``: PyTorch operations with a hand-written backward; every device and dtype;
* ``"composite"``: the differentiable composite of torch operations. It always serves calls
  recorded by a transform (``torch.func``, forward-mode AD, ``torch.jit.trace``, ONNX
  export), and double backward on every backend (``create_graph=True``).

Example::

    >>> import l2bn
    >>> print(l2bn.backends.status())          # what runs, per device, and why
    >>> with l2bn.backends.flags(cpu=False):   # run the PyTorch backend on CPU
    ...     y = layer(x)
    >>> with l2bn.backends.prefer("composite"):  # try one backend first
    ...     y = layer(x)
    >>> with l2bn.backends.prefer("cpu", strict=True):  # that one or an error
    ...     y = layer(x)

``L2BN_DISABLE_FUSED=1`` in the environment makes ``"cpu"`` unavailable at import.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from l2bn._impl import dispatch

__all__ = [
    "available",
    "flags",
    "is_enabled",
    "names",
    "prefer",
    "set_enabled",
    "set_preferred",
    "status",
    "unavailable_reason",
]


def names() -> tuple[str, ...]:
    """Every backend name, in the order of preference."""
    return (*dispatch.ORDER, "composite")


def _backend(name: str):
    try:
        return dispatch.BACKENDS[name]
    except KeyError:
        raise ValueError(f"l2bn: unknown backend {name!r}; expected one of {names()}") from None


def available(name: str) -> bool:
    """True when backend ``name`` was built and loaded (enabled or not)."""
    return _backend(name).UNAVAILABLE_REASON is None


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run (None when it can)."""
    return _backend(name).UNAVAILABLE_REASON


def is_enabled(name: str) -> bool:
    """True unless switched off with :func:`set_enabled` / :func:`flags`."""
    _backend(name)
    return dispatch.STATE["enabled"][name]


def set_enabled(name: str, enabled: bool) -> None:
    """Switch backend ``name`` on or off for every later call (``"composite"`` stays the
    last resort whatever its switch says)."""
    _backend(name)
    dispatch.STATE["enabled"][name] = bool(enabled)


def set_preferred(name: str | None, strict: bool = False) -> None:
    """Try backend ``name`` first, where it applies (None: the normal order).

    With ``strict=True`` a call that the backend cannot run raises ``RuntimeError``
    instead of going to the next backend (calls recorded by a transform still run the
    composite)."""
    if name is not None:
        _backend(name)
    dispatch.STATE["preferred"] = name
    dispatch.STATE["strict"] = bool(strict) and name is not None


@contextlib.contextmanager
def flags(**enabled: bool) -> Iterator[None]:
    """Switch backends on or off inside a ``with`` block, e.g. ``flags(cpu=False)``."""
    for name in enabled:
        _backend(name)
    previous = dict(dispatch.STATE["enabled"])
    try:
        for name, on in enabled.items():
            set_enabled(name, on)
        yield
    finally:
        dispatch.STATE["enabled"].update(previous)


@contextlib.contextmanager
def prefer(name: str | None, strict: bool = False) -> Iterator[None]:
    """Try backend ``name`` first inside a ``with`` block (see :func:`set_preferred`)."""
    previous = dispatch.STATE["preferred"], dispatch.STATE["strict"]
    set_preferred(name, strict)
    try:
        yield
    finally:
        dispatch.STATE["preferred"], dispatch.STATE["strict"] = previous


def _describe(name: str) -> str:
    backend = _backend(name)
    if backend.UNAVAILABLE_REASON is not None:
        # after a colon, not in parentheses: a reason may hold some of its own
        return f"{name}: unavailable: {backend.UNAVAILABLE_REASON}"
    state = "enabled" if is_enabled(name) else "disabled"
    return f"{name}: {state}, {backend.DESCRIPTION}"


def status(device: str | torch.device | None = None) -> str:
    """Which backend runs a training and an eval call of each floating dtype's input on
    ``device`` (default: CPU, and CUDA when present), then every backend and why it is or
    is not used. Multi-line text, for people and logs."""
    devices = [torch.device(device)] if device is not None else [torch.device("cpu")]
    if device is None and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    lines = []
    for dev in devices:
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            x = torch.empty((2, 1, 2), device=dev, dtype=dtype)
            stats = torch.empty((1,), device=dev, dtype=torch.float32)
            train = dispatch.choose(x, stats, stats, None, None, True, True).NAME
            evalb = dispatch.choose(x, stats, stats, None, None, False, False).NAME
            kind = f"{dev.type} {str(dtype).replace('torch.', '')}"
            lines.append(f"{kind}: training -> {train}, eval -> {evalb}")
    lines.extend(_describe(name) for name in names())
    return "\n".join(lines)
