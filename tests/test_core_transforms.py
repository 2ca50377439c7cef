"""L2BN composes with PyTorch's transforms as BatchNorm does (core issue: composability).

Each test compares with the float64 composite reference (``tests/_reference.py``) in
training and eval mode, with every backend preferred in turn; a result equal to plain
BatchNorm's would fail (the inputs' sample norms differ by orders of magnitude).
"""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp, stack_module_state, vmap

import l2bn
from _reference import reference_l2bn, relative_error
from l2bn import L2BatchNorm1d, L2BatchNorm2d

BACKENDS = ["cpu", "pytorch", "composite"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    if not l2bn.backends.available(request.param):
        pytest.skip(str(l2bn.backends.unavailable_reason(request.param)))
    with l2bn.backends.prefer(request.param):
        yield request.param


def _input(shape=(4, 3, 4, 4), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    # Sample norms spread over two orders of magnitude: BatchNorm's answer differs.
    return x * torch.logspace(-1, 1, shape[0], dtype=dtype).view(-1, *([1] * (len(shape) - 1)))


def _layer(c=3, cls=L2BatchNorm2d, dtype=torch.float64, training=True):
    torch.manual_seed(1)
    layer = cls(c).to(dtype).train(training)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
        layer.running_mean.uniform_(-0.5, 0.5)
        layer.running_var.uniform_(0.5, 2.0)
    return layer


def _reference(layer, x, training):
    return reference_l2bn(
        x,
        layer.running_mean.clone(),
        layer.running_var.clone(),
        layer.weight,
        layer.bias,
        training,
        layer.momentum,
        layer.eps,
    )


def _not_bn(layer, x, y, training):
    bn = F.batch_norm(
        x, layer.running_mean.clone(), layer.running_var.clone(), layer.weight, layer.bias, training
    )
    assert (y - bn).abs().max() > 1e-2, "indistinguishable from plain BatchNorm"


# ----- double backward ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 3, 4, 4), (6, 3)])
@pytest.mark.parametrize("training", [True, False])
def test_gradient_penalty_matches_composite(backend, shape, training):
    """The R1 / WGAN-GP pattern: loss = s + ||ds/dx||^2 with create_graph=True."""
    cls = L2BatchNorm2d if len(shape) == 4 else L2BatchNorm1d
    x0 = _input(shape)
    c = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grads = []
    for impl in ("layer", "reference"):
        layer = _layer(shape[1], cls, training=training)
        x = x0.clone().requires_grad_()
        y = layer(x) if impl == "layer" else _reference(layer, x, training)
        s = (c * y).sum()
        (gx,) = torch.autograd.grad(s, x, create_graph=True)
        loss = s + gx.square().sum()
        grads.append(torch.autograd.grad(loss, (x, layer.weight, layer.bias)))
    for ours, ref in zip(*grads, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape", [(3, 2, 3), (5, 2)])
def test_gradgradcheck(backend, shape):
    cls = L2BatchNorm1d
    layer = _layer(shape[1], cls, training=True)
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    x = _input(shape).requires_grad_()

    def fn(x, w, b):
        return l2bn.l2_batch_norm(x, None, None, w, b, training=True)

    assert torch.autograd.gradgradcheck(fn, (x, w, b))


# ----- torch.func ----------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_func_grad_over_functional_call(backend, training):
    layer = _layer(training=training)
    x = _input()
    c = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    buffers = {k: v.clone() for k, v in layer.named_buffers()}

    def loss(p, b, x):
        return (c * functional_call(layer, (p, b), (x,))).sum()

    gp = grad(loss)(params, buffers, x)
    ref = _layer(training=training)
    w = ref.weight.detach().clone().requires_grad_()
    b = ref.bias.detach().clone().requires_grad_()
    y = reference_l2bn(
        x, ref.running_mean.clone(), ref.running_var.clone(), w, b, training, 0.1, 1e-5
    )
    gw, gb = torch.autograd.grad((c * y).sum(), (w, b))
    torch.testing.assert_close(gp["weight"], gw)
    torch.testing.assert_close(gp["bias"], gb)


@pytest.mark.parametrize("training", [True, False])
def test_func_jvp_and_forward_ad(backend, training):
    x = _input()
    t = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    layer, ref_layer = _layer(training=training), _layer(training=training)
    params = dict(layer.named_parameters())

    def f(x):
        # Fresh buffers inside the transform: the running-statistics update may mutate them.
        buffers = {k: v.clone() for k, v in layer.named_buffers()}
        return functional_call(layer, (params, buffers), (x,))

    def f_ref(x):
        return _reference(ref_layer, x, training)

    y, ty = jvp(f, (x,), (t,))
    y_ref, ty_ref = jvp(f_ref, (x,), (t,))
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(ty, ty_ref)
    _not_bn(_layer(training=training), x, y, training)

    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        out = copy.deepcopy(layer)(fwAD.make_dual(x, t))
        y2, ty2 = fwAD.unpack_dual(out)
    torch.testing.assert_close(y2, y_ref)
    torch.testing.assert_close(ty2, ty_ref)


@pytest.mark.parametrize("training", [True, False])
def test_vmap_model_ensemble(backend, training):
    """Model ensembling as torch documents it: stacked parameters and buffers, one vmap."""
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), L2BatchNorm2d(3)).double()
        m.train(training)
        with torch.no_grad():
            m[1].running_var.uniform_(0.5, 2)
        models.append(m)
    x = _input((4, 2, 5, 5))
    eager = [copy.deepcopy(m)(x) for m in models]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def call(p, b, x):
        return functional_call(base, (p, b), (x,))

    out = vmap(call, in_dims=(0, 0, None))(params, buffers, x)
    for i, y in enumerate(eager):
        torch.testing.assert_close(out[i], y)
    if training:  # the stacked running statistics moved as each model's own did
        for i, m in enumerate(models):
            copy_m = copy.deepcopy(m)
            copy_m(x)
            torch.testing.assert_close(buffers["1.running_mean"][i], copy_m[1].running_mean)


# ----- FX, TorchScript ----------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_fx_symbolic_trace(backend, training):
    """FX records an L2BN submodule as a call of the module, as it records BatchNorm: the
    traced model follows ``.train()``/``.eval()`` switched after tracing. (Traced into, its
    mode was a constant of the graph: a model traced in training mode kept using batch
    statistics after ``.eval()``.)"""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), L2BatchNorm2d(4)).double().train(training)
    traced = torch.fx.symbolic_trace(model)
    modules = dict(traced.named_modules())
    nodes = [n for n in traced.graph.nodes if n.op in ("call_module", "call_function")]
    assert [n.op for n in nodes] == ["call_module", "call_module"], traced.graph
    assert isinstance(modules[nodes[1].target], L2BatchNorm2d)
    eager = copy.deepcopy(model)
    x = _input((4, 3, 6, 6))
    for mode in (training, not training, training):
        traced.train(mode)
        eager.train(mode)
        torch.testing.assert_close(traced(x), eager(x))
        for a, b in zip(traced.buffers(), eager.buffers(), strict=True):
            torch.testing.assert_close(a, b)


def test_fx_symbolic_trace_of_a_layer_alone_records_one_call():
    """The traced root is traced into (as FX does with a root BatchNorm): one wrapped call,
    its mode that of the trace."""
    layer = L2BatchNorm2d(4).double().eval()
    traced = torch.fx.symbolic_trace(layer)
    calls = [n for n in traced.graph.nodes if n.op == "call_function"]
    assert len(calls) == 1 and calls[0].target.__name__ == "layer_forward", traced.graph
    x = _input((4, 4, 6, 6))
    torch.testing.assert_close(traced(x), layer(x))


def test_jit_script_refuses_with_a_clear_message():
    with pytest.raises(RuntimeError, match=r"l2bn: torch.jit.script .*torch.jit.trace"):
        torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3), L2BatchNorm2d(4)))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("grad_enabled", [True, False])
def test_jit_trace(backend, training, grad_enabled, tmp_path):
    layer = _layer(training=training)
    x = _input()
    with torch.set_grad_enabled(grad_enabled):
        traced = torch.jit.trace(copy.deepcopy(layer), (x,), check_trace=False)
    assert "l2bn::" not in str(traced.graph)  # loads without l2bn: plain aten operations
    path = tmp_path / "traced.pt"
    traced.save(str(path))
    loaded = torch.jit.load(str(path))
    xg = _input(seed=4).requires_grad_()
    y = loaded(xg)
    ref_layer = _layer(training=training)
    if training:  # the trace ran once already: advance the reference's statistics too
        _reference(ref_layer, x, True)
        reference_l2bn(
            x, ref_layer.running_mean, ref_layer.running_var, None, None, True, 0.1, 1e-5
        )
    x2 = xg.detach().clone().requires_grad_()
    y_ref = reference_l2bn(
        x2,
        ref_layer.running_mean,
        ref_layer.running_var,
        ref_layer.weight,
        ref_layer.bias,
        training,
        0.1,
        1e-5,
    )
    torch.testing.assert_close(y, y_ref)
    (gx,) = torch.autograd.grad(y.square().sum(), xg)
    (gx_ref,) = torch.autograd.grad(y_ref.square().sum(), x2)
    torch.testing.assert_close(gx, gx_ref)


@pytest.mark.parametrize("training", [True, False])
def test_jit_trace_at_another_spatial_size(backend, training):
    """sqrt(D) of eq. (3) stays a function of the input's shape in the traced graph: a trace
    recorded at 4x4 normalizes 7x5 input by sqrt(3 * 7 * 5), not by sqrt(3 * 4 * 4)."""
    layer = _layer(training=training)
    traced = torch.jit.trace(copy.deepcopy(layer), (_input(),), check_trace=False)
    ref_layer = _layer(training=training)
    rm, rv = ref_layer.running_mean, ref_layer.running_var
    if training:  # the trace ran once: advance the reference's statistics too
        reference_l2bn(_input(), rm, rv, None, None, True, 0.1, 1e-5)
    x = _input((5, 3, 7, 5), seed=3)
    y = traced(x)
    ref = reference_l2bn(x, rm, rv, ref_layer.weight, ref_layer.bias, training, 0.1, 1e-5)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(traced.running_var, rv)


@pytest.mark.parametrize("training", [True, False])
def test_export_with_dynamic_spatial_dims(backend, training):
    """torch.export with symbolic H and W: the exported program is right at other sizes, or
    export refuses; it never keeps the traced size's sqrt(D)."""
    layer = _layer(dtype=torch.float32, training=training)
    dims = {"input": {2: torch.export.Dim("h", min=2), 3: torch.export.Dim("w", min=2)}}
    exported = torch.export.export(copy.deepcopy(layer), (_input(dtype=torch.float32),),
                                   dynamic_shapes=dims)  # fmt: skip
    x = _input((4, 3, 7, 5), seed=3, dtype=torch.float32)
    ref = _reference(copy.deepcopy(layer).double(), x.double(), training)
    torch.testing.assert_close(exported.module()(x).double(), ref, rtol=1e-5, atol=1e-5)


# ----- registered operators ----------------------------------------------------------


@pytest.mark.skipif(not l2bn.backends.available("cpu"), reason="fused kernels not built")
@pytest.mark.parametrize(
    "shape", [(4, 3, 5, 6), (6, 4), (3, 4, 2, 3, 2), (4, 3, 2, 2), (3, 5, 4, 4), (3, 5, 3, 6)]
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_fused_operators(shape, channels_last):
    """Each operator against its fake implementation (shapes, strides: train_forward's row
    moments are empty for channel-last maps of at most 16 positions), autograd and AOT."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    if channels_last and x.dim() in (4, 5):
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        x = x.contiguous(memory_format=fmt)
    c = shape[1]
    w, b = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
    rm, rv = torch.zeros(c), torch.ones(c)
    ops = torch.ops.l2bn
    torch.library.opcheck(ops.train_forward, (x, w, b, rm, rv, 0.1, 1e-5, 1e-12, True))
    torch.library.opcheck(ops.train_forward, (x, None, None, None, None, 0.1, 1e-5, 1e-12, False))
    _, *stats = ops.train_forward(x, w, b, None, None, 0.1, 1e-5, 1e-12, True)
    dy = torch.randn(shape, generator=g)
    for input_grad in (True, False):
        torch.library.opcheck(ops.train_backward, (dy, x, w, *stats, True, input_grad))
    torch.library.opcheck(ops.eval_forward, (x, rm, rv + 1, w, b, 1e-5, 1e-12, True))
    # l2bn::train, with its C++ autograd kernel: gradients through it, fake tensors, AOT.
    xg, wg, bg = (t.detach().clone().requires_grad_() for t in (x, w, b))
    torch.library.opcheck(ops.train, (xg, wg, bg, rm.clone(), rv.clone(), 0.1, 1e-5, 1e-12, True))
    torch.library.opcheck(ops.train, (xg, None, None, None, None, 0.1, 1e-5, 1e-12, False))
    torch.library.opcheck(ops.train, (x, w, b, rm, rv, 0.1, 1e-5, 1e-12, True))
    # l2bn::train_stats, functional, with its autograd formula registered from Python (what
    # exported training programs record).
    torch.library.opcheck(ops.train_stats, (xg, wg, bg, 1e-5, 1e-12, True))
    torch.library.opcheck(ops.train_stats, (xg, None, None, 1e-5, 1e-12, False))
    torch.library.opcheck(ops.train_stats, (x, w, b, 1e-5, 1e-12, True))
    # eval_forward's C++ autograd kernel (frozen-norm fine-tuning), and the differentiable
    # gradient its backward takes under create_graph=True.
    torch.library.opcheck(ops.eval_forward, (xg, rm, rv + 1, wg, bg, 1e-5, 1e-12, True))
    torch.library.opcheck(ops.eval_forward, (xg, rm, rv + 1, None, None, 1e-5, 1e-12, False))
    for needs in ([True, True, True], [False, True, False]):
        torch.library.opcheck(
            ops.differentiable_eval_grads, (dy, x, rm, rv + 1, w, 1e-5, 1e-12, True, needs)
        )


@pytest.mark.skipif(not l2bn.backends.available("cpu"), reason="fused kernels not built")
@pytest.mark.parametrize("training", [True, False])
def test_compile_fullgraph_keeps_the_fused_operators(training):
    from torch._dynamo.testing import CompileCounterWithBackend

    layer = _layer(dtype=torch.float32, training=training)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(copy.deepcopy(layer), backend=counter, fullgraph=True)
    x = _input(dtype=torch.float32).requires_grad_(training)
    y = compiled(x)
    torch.testing.assert_close(y, copy.deepcopy(layer)(x), rtol=1e-5, atol=1e-5)
    # The operator sits in the top graph (eval) or in the autograd function's forward body.
    graph = "\n".join(
        str(m.graph) for g in counter.graphs for m in g.modules() if hasattr(m, "graph")
    )
    op = "l2bn.train_forward" if training else "l2bn.eval_forward"
    assert op in graph, graph
    y.sum().backward()  # compiled backward runs (the fused backward operator in training)


@pytest.mark.parametrize("case", ["bfloat16 autocast", "pytorch backend"])
def test_compile_fullgraph_traces_the_pytorch_backend(case):
    """The PyTorch backend (bfloat16 input, or the fused kernels switched off) compiles into
    one graph in training: its autograd function's backward holds no check that Dynamo
    cannot trace (a graph break there ran the whole layer eagerly). Output and gradients
    match eager, and the float32 output matches the float64 reference."""
    layer = _layer(dtype=torch.float32)
    x = _input(dtype=torch.float32)
    ref = _reference(copy.deepcopy(layer).double(), x.double(), True)
    bf16 = case == "bfloat16 autocast"
    compiled_layer = copy.deepcopy(layer)
    compiled = torch.compile(compiled_layer, backend="aot_eager", fullgraph=True)
    results = []
    for module in (compiled, layer):
        xi = x.clone().requires_grad_()
        off = l2bn.backends.flags(cpu=False) if not bf16 else contextlib.nullcontext()
        with off, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            # bfloat16 activations, as a convolution under autocast gives them
            y = module(xi.to(torch.bfloat16) if bf16 else xi * 1.0)
        y.float().square().sum().backward()
        results.append((y, xi.grad, module.weight.grad))
    tol = {"rtol": 2e-2, "atol": 2e-2} if bf16 else {}
    for got, want in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(got, want, **tol)
    if not bf16:
        torch.testing.assert_close(results[0][0].double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not l2bn.backends.available("cpu"), reason="fused kernels not built")
def test_export_keeps_the_fused_operator_with_a_dynamic_batch():
    layer = _layer(dtype=torch.float32, training=False)
    batch = torch.export.Dim("batch", min=2)
    x = _input(dtype=torch.float32)
    exported = torch.export.export(layer, (x,), dynamic_shapes={"input": {0: batch}})
    assert "l2bn.eval_forward" in str(exported.graph)
    x7 = _input((7, 3, 4, 4), dtype=torch.float32)
    torch.testing.assert_close(exported.module()(x7), layer(x7))
    ref = _reference(copy.deepcopy(layer).double(), x7.double(), False)
    torch.testing.assert_close(exported.module()(x7).double(), ref, rtol=1e-5, atol=1e-5)


def test_scale_form_is_default():
    assert math.isclose(L2BatchNorm2d(2).l2_eps, 1e-12) and L2BatchNorm2d(2).scale


# ----- ONNX ----------------------------------------------------------------------------


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("grad_enabled", [True, False])
def test_onnx_export_runs_in_onnxruntime(dynamo, grad_enabled, tmp_path):
    import onnxruntime as ort  # the dev extra installs it (and onnxscript for dynamo=True)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), L2BatchNorm2d(4)).eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2)
        model[1].running_mean.uniform_(-0.5, 0.5)
    path = tmp_path / "model.onnx"
    x = torch.randn(2, 3, 6, 6)
    with torch.set_grad_enabled(grad_enabled):
        if dynamo:
            dims = {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim("h", min=3),
                    3: torch.export.Dim("w", min=3)}  # fmt: skip
            program = torch.onnx.export(
                model, (x,), dynamo=True, dynamic_shapes={"input": dims}, verbose=False
            )
            program.save(str(path))
        else:
            torch.onnx.export(
                model, (x,), str(path), dynamo=False, input_names=["x"],
                dynamic_axes={"x": {0: "batch", 2: "h", 3: "w"}},
            )  # fmt: skip
    session = ort.InferenceSession(str(path))
    # Another batch and another spatial size than the export's: sqrt(D) of eq. (3) must
    # follow the input (D = 4 * 7 * 5 here, 4 * 4 * 4 when exported).
    x5 = _input((5, 3, 9, 7), dtype=torch.float32)
    out = session.run(None, {session.get_inputs()[0].name: x5.numpy()})[0]
    conv = copy.deepcopy(model[0]).double()
    norm = model[1]
    ref = reference_l2bn(
        conv(x5.double()),
        norm.running_mean.double(),
        norm.running_var.double(),
        norm.weight.double(),
        norm.bias.double(),
    ).detach()
    error = (torch.from_numpy(out).double() - ref).abs().max() / ref.abs().max()
    assert error < 1e-5, float(error)


# ----- batched gradients: is_grads_batched and jacobian(vectorize=True) ---------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_batched_grads_match_a_loop_on_the_pytorch_backend(dtype):
    """``torch.autograd.grad(is_grads_batched=True)`` runs the backward under the legacy
    vmap; the PyTorch backend's backward wrote the batched ``dy`` into plain buffers in
    place (a vmap error). Each batched gradient must equal the one-vector gradient."""
    layer = _layer(dtype=dtype)
    x = _input(dtype=dtype).requires_grad_()
    with l2bn.backends.prefer("pytorch"):
        y = layer(x)
    g = torch.Generator().manual_seed(5)
    vectors = torch.randn(3, *y.shape, generator=g).to(dtype)
    inputs = (x, layer.weight, layer.bias)
    batched = torch.autograd.grad(y, inputs, vectors, retain_graph=True, is_grads_batched=True)
    limit = 1e-10 if dtype == torch.float64 else 3e-2  # bfloat16: another rounding order
    for i, v in enumerate(vectors):
        single = torch.autograd.grad(y, inputs, v, retain_graph=True)
        for name, b, s in zip(("x", "weight", "bias"), batched, single, strict=True):
            assert b[i].dtype == s.dtype
            assert relative_error(b[i], s) < limit, (i, name, b[i], s)


def test_vectorized_jacobian_matches_the_reference_on_the_pytorch_backend():
    """``jacobian(vectorize=True)`` (is_grads_batched inside) in training mode, against
    the float64 reference's jacobian and the unvectorized one."""
    layer = _layer(c=2)
    x = _input((3, 2, 2, 2))

    def l2bn_fn(t):
        return layer(t)

    def reference_fn(t):
        return reference_l2bn(t, None, None, layer.weight, layer.bias, True)

    with l2bn.backends.prefer("pytorch"):
        vectorized = torch.autograd.functional.jacobian(l2bn_fn, x, vectorize=True)
        looped = torch.autograd.functional.jacobian(l2bn_fn, x)
    expected = torch.autograd.functional.jacobian(reference_fn, x)
    torch.testing.assert_close(vectorized, expected)
    torch.testing.assert_close(vectorized, looped)
