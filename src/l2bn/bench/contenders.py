"""What ``l2bn bench`` times: native BatchNorm, the naive composite, and L2BN's layers."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2bn.layers import L2BatchNorm1d, L2BatchNorm2d

CONTENDERS = ("bn", "naive", "l2bn")
MODES = ("train_fwd", "train_fwd_bwd", "eval_fwd")
MODE_LABELS = {"train_fwd": "train fwd", "train_fwd_bwd": "train fwd+bwd", "eval_fwd": "eval fwd"}

FULL_SHAPES_2D = (
    (128, 16, 32, 32),
    (128, 32, 16, 16),
    (128, 64, 8, 8),
    (256, 256, 14, 14),
    (64, 64, 56, 56),
)
FULL_SHAPES_1D = ((1024, 512),)
QUICK_SHAPES_2D = ((8, 4, 6, 6),)
QUICK_SHAPES_1D = ((16, 8),)


def naive_normalize(x: Tensor, l2_eps: float) -> Tensor:
    """Eq. (3) done naively: ``F.normalize`` of each flattened sample of ``x`` (``(N,
    ...)``) times ``sqrt(D)``, ``D`` values a sample; in the shape of ``x``."""
    flat = x.reshape(x.shape[0], -1)
    return (F.normalize(flat, dim=1, eps=l2_eps) * math.sqrt(flat.shape[1])).reshape(x.shape)


class NaiveComposite(nn.Module):
    """Eq. (3) done naively (:func:`naive_normalize`), then the given BatchNorm layer."""

    def __init__(self, bn: nn.Module, l2_eps: float = 1e-12) -> None:
        super().__init__()
        self.bn = bn
        self.l2_eps = l2_eps

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(naive_normalize(x, self.l2_eps))


@dataclass(frozen=True)
class Case:
    """One input shape in one memory layout."""

    shape: tuple[int, ...]
    layout: str  # "contiguous" or "channels_last"

    @property
    def name(self) -> str:
        dims = "x".join(str(s) for s in self.shape)
        kind = "1d" if len(self.shape) in (2, 3) else "2d"
        suffix = " CL" if self.layout == "channels_last" else ""
        return f"{kind} {dims}{suffix}"

    def input(self, generator: torch.Generator) -> Tensor:
        x = torch.randn(self.shape, generator=generator)
        if self.layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def cases(quick: bool) -> list[Case]:
    """The standard shapes (CIFAR- and ImageNet-sized maps, an MLP head; or tiny ones with
    ``quick``), 2d in both layouts, 1d contiguous."""
    shapes_2d = QUICK_SHAPES_2D if quick else FULL_SHAPES_2D
    shapes_1d = QUICK_SHAPES_1D if quick else FULL_SHAPES_1D
    out = [Case(s, layout) for s in shapes_2d for layout in ("contiguous", "channels_last")]
    return out + [Case(s, "contiguous") for s in shapes_1d]


def parse_shape(text: str) -> tuple[int, ...]:
    """``"NxC"``, ``"NxCxL"`` or ``"NxCxHxW"`` as a shape; ``ValueError`` otherwise."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) not in (2, 3, 4) or min(shape) < 1 or shape[0] < 2:
        raise ValueError(
            f"--shape {text!r}: expected NxC, NxCxL or NxCxHxW with positive sizes and N >= 2"
            ", e.g. 16384x32 or 128x16x32x32"
        )
    return shape


def script_shape(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[int, ...]:
    """A benchmark script's ``--shape`` parsed, after checking ``--rounds`` and ``--threads``
    (at least 1); bad input exits through ``parser.error``."""
    if args.rounds < 1 or args.threads < 1:
        parser.error("--rounds and --threads must be >= 1")
    try:
        return parse_shape(args.shape)
    except ValueError as error:
        parser.error(str(error))


def shape_cases(shapes: list[tuple[int, ...]]) -> list[Case]:
    """Cases of the given shapes: 4-D in both layouts, others contiguous."""
    layouts = {4: ("contiguous", "channels_last")}
    return [Case(s, layout) for s in shapes for layout in layouts.get(len(s), ("contiguous",))]


def build(name: str, num_features: int, dims: int) -> nn.Module:
    """A fresh contender module for ``dims``-D input (2, 3: BatchNorm1d family, 4: 2d)."""
    bn_cls = nn.BatchNorm1d if dims in (2, 3) else nn.BatchNorm2d
    if name == "bn":
        return bn_cls(num_features)
    if name == "naive":
        return NaiveComposite(bn_cls(num_features))
    if name == "l2bn":
        return (L2BatchNorm1d if dims in (2, 3) else L2BatchNorm2d)(num_features)
    raise ValueError(f"unknown contender {name!r}; valid names: {', '.join(CONTENDERS)}")


@dataclass
class Bench:
    """What one case's contenders are timed on: the input ``x`` (requires grad), the
    output gradient ``dy``, a fresh module per contender (in the case's layout) and
    :meth:`drop_grads`, run before every call so that no gradient accumulates."""

    x: Tensor
    dy: Tensor
    modules: dict[str, nn.Module]

    def drop_grads(self) -> None:
        self.x.grad = None
        for m in self.modules.values():
            for p in m.parameters():
                p.grad = None


def prepare(
    case: Case,
    names: tuple[str, ...] | list[str],
    seed: int,
    modules: dict[str, nn.Module] | None = None,
) -> Bench:
    """The input, output gradient (from ``seed``) and modules of ``names`` for ``case``
    (or the given ``modules`` instead), in the case's layout."""
    gen = torch.Generator().manual_seed(seed)
    x = case.input(gen).requires_grad_()
    dy = case.input(gen)
    if modules is None:
        modules = {name: build(name, case.shape[1], len(case.shape)) for name in names}
    if case.layout == "channels_last":
        for m in modules.values():
            m.to(memory_format=torch.channels_last)
    return Bench(x, dy, modules)


def mode_call(module: nn.Module, mode: str, x: Tensor, dy: Tensor) -> Callable[[], object]:
    """The call timed for ``mode``: training forward (graph recorded), forward+backward,
    or eval forward under ``no_grad``."""
    if mode == "train_fwd":
        return lambda: module(x)
    if mode == "train_fwd_bwd":
        return lambda: module(x).backward(dy)
    if mode == "eval_fwd":

        def call() -> Tensor:
            with torch.no_grad():
                return module(x)

        return call
    raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")


OP_CONTENDERS = ("bn_op", "l2bn_op")


def op_calls(mode: str, x: Tensor, dy: Tensor) -> dict[str, Callable[[], object]]:
    """The operators alone, without modules or autograd: ATen's ``native_batch_norm`` (and
    ``native_batch_norm_backward``) against the fused L2BN operators, on detached tensors
    with their own parameters and running statistics. What the kernels cost, apart from
    the per-call overhead of the layers. Each contender's call crosses the same Python
    layers: in training both through ``torch.ops`` overloads (the fused training operators
    have no other Python entry; ``torch.native_batch_norm`` would skip about 2 us of it),
    in eval both through a direct binding (``torch.native_batch_norm``, L2BN's entry
    point)."""
    from l2bn._impl import cpu

    x = x.detach()
    c = x.shape[1]
    w, b = torch.ones(c), torch.zeros(c)
    bn_stats = (torch.zeros(c), torch.ones(c))
    l2_stats = (torch.zeros(c), torch.ones(c))
    eps, momentum = 1e-5, 0.1
    mask = [True, True, True]
    bn_train_forward = torch.ops.aten.native_batch_norm.default
    bn_train_backward = torch.ops.aten.native_batch_norm_backward.default

    def bn_fwd():
        return bn_train_forward(x, w, b, *bn_stats, True, momentum, eps)

    def l2_fwd():
        return cpu._train_forward(x, w, b, *l2_stats, momentum, eps, 1e-12, True)

    if mode == "train_fwd":
        return {"bn_op": bn_fwd, "l2bn_op": l2_fwd}
    if mode == "train_fwd_bwd":

        def bn_both():
            _, mean, invstd = bn_fwd()
            return bn_train_backward(dy, x, w, *bn_stats, mean, invstd, True, eps, mask)

        def l2_both():
            _, *stats = l2_fwd()
            return cpu._train_backward(dy, x, w, *stats, True, True)

        return {"bn_op": bn_both, "l2bn_op": l2_both}
    if mode == "eval_fwd":

        def l2_eval():
            # As the layer calls it without a graph: through its entry point (csrc/
            # entry_points.cpp), whose C++ autograd kernel records nothing for detached x.
            return cpu._eval_entry(x, *l2_stats, w, b, eps, 1e-12, True)

        return {
            "bn_op": lambda: torch.native_batch_norm(x, w, b, *bn_stats, False, momentum, eps),
            "l2bn_op": l2_eval,
        }
    raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
