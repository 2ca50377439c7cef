"""The Triton backend on a GPU: torch.compile, CUDA graphs, launches seen by the profiler,
no host synchronization, autocast. Skipped where CUDA (or triton) is absent; the same
kernels are checked for correctness on CPU by ``test_triton_kernels.py``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from _reference import reference_l2bn, relative_error
from l2bn import L2BatchNorm2d, backends, convert_bn_to_l2bn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(
        not backends.available("triton"), reason=str(backends.unavailable_reason("triton"))
    ),
]

KERNELS = {
    "row_sums_kernel",
    "forward_finalize_kernel",
    "affine_kernel",
    "eval_sample_kernel",
    "grad_sums_kernel",
    "backward_finalize_kernel",
    "grad_input_kernel",
    "folded_affine_kernel",
    "folded_grad_input_kernel",
}


def _model(channels_last: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = convert_bn_to_l2bn(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 4),
        )
    ).cuda()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _kernels(prof) -> list[str]:
    """Names of the GPU kernels a profile recorded, in order."""
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return [e.name for e in sorted(events, key=lambda e: e.time_range.start)]


def _profile(fn) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return _kernels(prof)


@pytest.mark.parametrize("folded", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_launches_seen_by_the_profiler(channels_last, folded, monkeypatch):
    """Every GPU kernel of a layer's training forward, backward and eval forward: 2, 2
    and at most 2 Triton kernels with the finalize folded into the output kernels (3, 3
    and at most 2 without), plus BatchNorm's own ``num_batches_tracked += 1``."""
    from l2bn._impl.triton import ops

    monkeypatch.setattr(ops, "FOLD_MAX_STATS", 2**62 if folded else 0)
    layer = L2BatchNorm2d(16).cuda()
    x = torch.randn(8, 16, 14, 14, device="cuda")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    dy = torch.randn_like(x)
    layer(x).backward(dy)  # compile the kernels first
    x.grad = None  # a second backward would accumulate: one add kernel per gradient
    layer.zero_grad(set_to_none=True)
    out = {}
    forward = _profile(lambda: out.setdefault("y", layer(x)))
    backward = _profile(lambda: out["y"].backward(dy))
    layer.eval()
    with torch.no_grad():
        evaluate = _profile(lambda: layer(x))
    launches = 2 if folded else 3
    for name, kernels in (("forward", forward), ("backward", backward)):
        ours = [k for k in kernels if k in KERNELS]
        assert len(ours) == launches, (name, kernels)
        assert len(kernels) - len(ours) <= (1 if name == "forward" else 0), (name, kernels)
    assert [k for k in evaluate if k in KERNELS] and len(evaluate) <= 2, evaluate


def test_no_host_synchronization():
    """A training forward + backward and an eval forward never wait for the GPU."""
    layer = L2BatchNorm2d(8).cuda()
    x = torch.randn(4, 8, 6, 6, device="cuda", requires_grad=True)
    layer(x).sum().backward()  # warm-up: compile the kernels, allocate
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        layer(x).square().sum().backward()
        layer.eval()
        with torch.no_grad():
            layer(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cuda_graph_training_step():
    """A whole SGD step (forward, backward, optimizer) captured in a CUDA graph and replayed
    gives the eager steps' parameters and running statistics."""
    eager, graphed = _model(), _model()
    graphed.load_state_dict(eager.state_dict())
    x = torch.randn(6, 3, 8, 8, device="cuda")
    target = torch.randint(0, 4, (6,), device="cuda")
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (eager, graphed)]

    def step(model, opt):
        opt.zero_grad(set_to_none=False)
        loss = nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up on a side stream, as torch.cuda.graphs asks
            step(graphed, opts[1])
            step(eager, opts[0])
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(graphed, opts[1])
    step(eager, opts[0])  # the capture did not run the step: eager is one step ahead
    for _ in range(3):
        graph.replay()
        step(eager, opts[0])
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(eager.state_dict().values(), graphed.state_dict().values(), strict=True):
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_compile_fullgraph_keeps_the_kernels(training):
    """``torch.compile(fullgraph=True)`` with inductor: same results as eager, and the
    compiled program launches the Triton kernels (not a decomposition)."""
    eager, compiled_model = _model(channels_last=True), _model(channels_last=True)
    compiled_model.load_state_dict(eager.state_dict())
    eager.train(training)
    compiled_model.train(training)
    compiled = torch.compile(compiled_model, fullgraph=True)
    x = torch.randn(4, 3, 8, 8, device="cuda") * torch.linspace(0.5, 3, 4, device="cuda").view(
        -1, 1, 1, 1
    )
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-5)
    if training:
        kernels = _profile(lambda: compiled(x).sum().backward())
    else:
        # Eval with autograd recording (above) runs the differentiable PyTorch path; the
        # eval kernel is for calls without it.
        with torch.no_grad():
            kernels = _profile(lambda: compiled(x))
    assert any(k in KERNELS for k in kernels), kernels
    if training:
        eager(x).sum().backward()
        for p, q in zip(eager.parameters(), compiled_model.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5)
        for a, b in zip(eager.buffers(), compiled_model.buffers(), strict=True):
            torch.testing.assert_close(b.float(), a.float(), rtol=1e-4, atol=1e-5)


def test_bfloat16_autocast_matches_the_reference():
    """Under bf16 autocast a convolution hands L2BN bfloat16 input; the output is bfloat16
    and matches the float64 reference on that input to bfloat16 rounding."""
    model = _model()
    layer = model[1]
    x = torch.randn(4, 3, 8, 8, device="cuda")
    captured = {}
    layer.register_forward_hook(lambda m, i, o: captured.update(x=i[0], y=o))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model(x)
    assert captured["x"].dtype == torch.bfloat16 and captured["y"].dtype == torch.bfloat16
    ref = reference_l2bn(
        captured["x"].double().cpu(), None, None, layer.weight.double().cpu(),
        layer.bias.double().cpu(), training=True,
    )  # fmt: skip
    assert relative_error(captured["y"].cpu(), ref) < 8e-3


def test_copied_layer_keeps_running_on_the_gpu_backend():
    """A deep-copied layer (as DDP and EMA do) still dispatches to the Triton kernels."""
    layer = copy.deepcopy(L2BatchNorm2d(4).cuda())
    x = torch.randn(3, 4, 5, 5, device="cuda")
    kernels = _profile(lambda: layer(x))
    assert {"forward_finalize_kernel", "folded_affine_kernel"} & set(kernels), kernels
