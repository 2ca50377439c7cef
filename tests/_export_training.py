"""A training step of an exported Conv2d -> L2BatchNorm2d model, and of its float64
reference: what ``torch.export`` in training mode is checked against (the CPU and PyTorch
backends in ``test_core_compile.py``, the Triton backend in ``test_triton_kernels.py``)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from _reference import reference_l2bn
from l2bn import L2BatchNorm2d


def conv_l2bn(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), L2BatchNorm2d(4))
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-1, 1)
    return net.to(dtype).train()


def case(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, nn.Module, dict]:
    """The input (samples of norms spread over two decades), the probe of the loss, the
    model and the reference step that both export tests use."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 6, 6, generator=g) * torch.logspace(-1, 1, 4).view(-1, 1, 1, 1)
    x = x.to(dtype)
    probe = torch.randn(4, 4, 4, 4, generator=g, dtype=torch.float64)
    net = conv_l2bn(dtype)
    return x, probe, net, reference_step(net, x, probe)


def _after_step(net: nn.Module, y: torch.Tensor, xg: torch.Tensor) -> dict:
    found = {"y": y, "x.grad": xg.grad}
    for name in ("0.weight", "1.weight", "1.bias"):
        found[name + ".grad"] = net.get_parameter(name).grad
    for name in ("1.running_mean", "1.running_var"):
        found[name] = net.get_buffer(name)
    return found


def training_step(net: nn.Module, x: torch.Tensor, probe: torch.Tensor) -> dict:
    """Output, input and parameter gradients of ``sum(probe * net(x))``, and the running
    statistics after the step (``net`` holds a conv ``0`` and an L2BN layer ``1``)."""
    xg = x.detach().clone().requires_grad_()
    y = net(xg)
    (y.double() * probe).sum().backward()
    return _after_step(net, y, xg)


def reference_step(net: nn.Module, x: torch.Tensor, probe: torch.Tensor) -> dict:
    """:func:`training_step` of a float64 copy of ``net`` with the reference L2BN."""
    net = copy.deepcopy(net).double()
    conv, norm = net[0], net[1]
    xg = x.detach().double().requires_grad_()
    y = reference_l2bn(
        conv(xg), norm.running_mean, norm.running_var, norm.weight, norm.bias, True,
        norm.momentum, norm.eps,
    )  # fmt: skip
    (y * probe).sum().backward()
    return _after_step(net, y, xg)
