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


def training_step(net: nn.Module, x: torch.Tensor, probe: torch.Tensor) -> dict:
    """Output, input and parameter gradients of ``sum(probe * net(x))``, and the running
    statistics after the step (``net`` holds a conv ``0`` and an L2BN layer ``1``)."""
    xg = x.detach().clone().requires_grad_()
    y = net(xg)
    (y.double() * probe).sum().backward()
    found = {"y": y, "x.grad": xg.grad}
    for name in ("0.weight", "1.weight", "1.bias"):
        found[name + ".grad"] = net.get_parameter(name).grad
    for name in ("1.running_mean", "1.running_var"):
        found[name] = net.get_buffer(name)
    return found


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
    found = {"y": y, "x.grad": xg.grad}
    for name in ("0.weight", "1.weight", "1.bias"):
        found[name + ".grad"] = net.get_parameter(name).grad
    for name in ("1.running_mean", "1.running_var"):
        found[name] = net.get_buffer(name)
    return found
