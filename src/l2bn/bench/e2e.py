"""End-to-end figure: one SGD step of the CIFAR ResNet-20, BatchNorm vs L2BN everywhere."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from l2bn.bench.timing import Timing, time_interleaved
from l2bn.convert import convert_bn_to_l2bn


def resnet20_pair(num_classes: int = 100) -> tuple[nn.Module, nn.Module]:
    """ResNet-20 with BatchNorm and the same network (same weights) with L2BN."""
    from l2bn.models import create_model

    bn_model = create_model("resnet20", num_classes=num_classes, norm_layer="bn")
    try:
        l2_model = create_model("resnet20", num_classes=num_classes, norm_layer="l2bn")
        l2_model.load_state_dict(bn_model.state_dict())
    except (ValueError, KeyError, RuntimeError):
        l2_model = convert_bn_to_l2bn(copy.deepcopy(bn_model))
    return bn_model, l2_model


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def time_training_step(
    batch: int, rounds: int, channels_last: bool = False, seed: int = 0, clock: str = "wall"
) -> dict[str, Timing]:
    """Median-ready timings of one SGD step (supplement Table 1 optimizer) for both nets."""
    torch.manual_seed(seed)
    bn_model, l2_model = resnet20_pair()
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 100, (batch,))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    calls = {}
    for name, model in (("bn", bn_model), ("l2bn", l2_model)):
        model.train()
        if channels_last:
            model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(
            model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
        calls[name] = _step(model, opt, x, y)
    return time_interleaved(calls, rounds, warmup=2, clock=clock)


def _fused_calls(step) -> dict[str, int]:
    """How many times one call of ``step`` ran each fused L2BN operator (profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    counts: dict[str, int] = {}
    for event in prof.events():
        if event.name.startswith("l2bn::"):
            counts[event.name] = counts.get(event.name, 0) + 1
    return counts


def time_compiled_training_step(
    batch: int, rounds: int, seed: int = 0, clock: str = "wall"
) -> dict[str, object]:
    """The SGD step of :func:`time_training_step` with both networks under
    ``torch.compile(fullgraph=True)`` (inductor), and how often a compiled L2BN step runs
    each fused operator. On a compilation error: ``{"error": message}``."""
    torch.manual_seed(seed)
    bn_model, l2_model = resnet20_pair()
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 100, (batch,))
    calls = {}
    try:
        for name, model in (("bn", bn_model), ("l2bn", l2_model)):
            model.train()
            opt = torch.optim.SGD(
                model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
            )
            calls[name] = _step(torch.compile(model, fullgraph=True), opt, x, y)
            calls[name]()  # compiles forward and backward
        timings = time_interleaved(calls, rounds, warmup=1, clock=clock)
        # After the rounds: before them, this step would be one more warm-up of L2BN's.
        fused = _fused_calls(calls["l2bn"])
    except Exception as exc:  # any compiler failure is reported, not raised
        return {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}
    return {"timings": timings, "fused_calls": fused}
