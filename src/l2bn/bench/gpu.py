"""``l2bn bench --device cuda``: L2BN on one GPU against cuDNN and native BatchNorm.

Cases: the ResNet-50 stage shapes ``(256, 256, 56, 56)``, ``(256, 512, 28, 28)``,
``(256, 1024, 14, 14)``, ``(256, 2048, 7, 7)`` and the CIFAR shapes ``(128, 16, 32, 32)``,
``(128, 64, 8, 8)``, each in float32 and under bfloat16 autocast (bfloat16 input, float32
parameters, as a convolution hands it over), contiguous and channels_last.

Contenders: ``cudnn_bn`` (``nn.BatchNorm2d``), ``native_bn`` (the same under
``torch.backends.cudnn.flags(enabled=False)``), ``naive`` (``F.normalize`` of the
flattened sample times ``sqrt(D)``, then BatchNorm), ``l2bn`` (``L2BatchNorm2d`` eager: the
Triton backend where available) and ``l2bn_compiled`` (the same under
``torch.compile(fullgraph=True)``). Modes: training forward (graph recorded), training
forward+backward, eval forward under ``no_grad``.

Per case and mode the contenders run interleaved round by round, in the orders of the CPU
benchmark (``l2bn.bench.timing.round_orders``: for more than three contenders, each has
each other one just before it equally often over every ``k - 1`` rounds); each round times
``reps`` back-to-back calls between two CUDA events (GPU time, launch gaps included) and
reports per call. Kernels per call come from one ``torch.profiler`` run of each contender
(every GPU-side event: kernels, memsets, copies). Ratios are to cuDNN BatchNorm, to native
BatchNorm and to the faster of the two (the issue's targets) of the same run. Then one SGD
step of ResNet-50 (batch 64, bf16 autocast, channels_last) and of the CIFAR ResNet-20
(batch 128), BatchNorm vs L2BN everywhere, and whether an L2BN training step can be
captured in a CUDA graph (and its replay time). ``torch.compile`` costs are bounded by a
budget: past it the compiled contender is skipped (and marked so).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2bn import backends
from l2bn.bench.contenders import MODE_LABELS, MODES, NaiveComposite
from l2bn.bench.report import quick_note, to_json
from l2bn.bench.timing import round_orders
from l2bn.layers import L2BatchNorm2d

RESNET50_SHAPES = ((256, 256, 56, 56), (256, 512, 28, 28), (256, 1024, 14, 14), (256, 2048, 7, 7))
CIFAR_SHAPES = ((128, 16, 32, 32), (128, 64, 8, 8))
QUICK_SHAPES = ((16, 32, 14, 14), (32, 64, 7, 7))
PRECISIONS = ("float32", "bf16-autocast")
LAYOUTS = ("contiguous", "channels_last")
CONTENDERS = ("cudnn_bn", "native_bn", "naive", "l2bn", "l2bn_compiled")
COMPILE_BUDGET_S = 100.0  # total seconds of torch.compile warm-ups before skipping it
CASES_BUDGET_S = 210.0  # seconds for the cases; later cases are skipped (the whole < 5 min)
TARGET_ROUND_S = 2e-3  # each round times at least this much GPU work per contender


class NoCudaError(RuntimeError):
    """``--device cuda`` on a machine where torch sees no CUDA device."""


@dataclass(frozen=True)
class GpuCase:
    """One input shape, precision and memory layout."""

    shape: tuple[int, ...]
    precision: str  # "float32" or "bf16-autocast"
    layout: str  # "contiguous" or "channels_last"

    @property
    def name(self) -> str:
        dims = "x".join(str(s) for s in self.shape)
        precision = "f32" if self.precision == "float32" else "bf16"
        return f"{dims} {precision}{' CL' if self.layout == 'channels_last' else ''}"

    def tensor(self, device: torch.device, generator: torch.Generator) -> Tensor:
        x = torch.randn(self.shape, generator=generator, device=device)
        if self.precision != "float32":
            x = x.to(torch.bfloat16)
        if self.layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def cases(quick: bool, text: str = "") -> list[GpuCase]:
    """The issue's cases (or two small ones), filtered by ``text`` in their names."""
    shapes = QUICK_SHAPES if quick else RESNET50_SHAPES + CIFAR_SHAPES
    out = [GpuCase(s, p, lay) for s in shapes for p in PRECISIONS for lay in LAYOUTS]
    return [c for c in out if text in c.name]


# --------------------------------------------------------------------------------------
# clocks and kernel counts


class EventClock:
    """GPU time of a stretch of work, from two CUDA events (milliseconds, when read)."""

    def __init__(self) -> None:
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def __enter__(self) -> EventClock:
        self.start.record()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end.record()

    def seconds(self) -> float:
        return self.start.elapsed_time(self.end) / 1e3


class WallClock:
    """``EventClock``'s interface on the host clock (CPU runs of the benchmark's code)."""

    def __enter__(self) -> WallClock:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.t1 = time.perf_counter()

    def seconds(self) -> float:
        return self.t1 - self.t0


def _clock(device: torch.device):
    return EventClock() if device.type == "cuda" else WallClock()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_kernels(call: Callable[[], object], device: torch.device) -> int | None:
    """GPU-side events (kernels, memsets, copies) of one ``call``; None off CUDA."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    _synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        _synchronize(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def time_calls(
    calls: dict[str, Callable[[], object]], rounds: int, reps: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each contender, one sample per round, in the orders of
    :func:`l2bn.bench.timing.round_orders`."""
    clocks: dict[str, list] = {name: [] for name in calls}
    for order in round_orders(list(calls), rounds):
        for name in order:
            call = calls[name]
            with _clock(device) as clock:
                for _ in range(reps):
                    call()
            clocks[name].append(clock)
    _synchronize(device)
    return {name: [c.seconds() / reps for c in cs] for name, cs in clocks.items()}


# --------------------------------------------------------------------------------------
# contenders


def _cudnn(enabled: bool) -> Callable[[], contextlib.AbstractContextManager]:
    return lambda: torch.backends.cudnn.flags(enabled=enabled)


def build_contenders(
    channels: int, device: torch.device, layout: str, names: tuple[str, ...]
) -> dict[str, tuple[nn.Module, Callable[[], contextlib.AbstractContextManager]]]:
    """Fresh modules and the context each one runs in."""
    out = {}
    for name in names:
        if name in ("cudnn_bn", "native_bn"):
            module: nn.Module = nn.BatchNorm2d(channels)
        elif name == "naive":
            module = NaiveComposite(nn.BatchNorm2d(channels))
        elif name in ("l2bn", "l2bn_compiled"):
            module = L2BatchNorm2d(channels)
        else:
            raise ValueError(f"unknown contender {name!r}; valid names: {', '.join(CONTENDERS)}")
        module = module.to(device)
        if layout == "channels_last":
            module = module.to(memory_format=torch.channels_last)
        if name == "l2bn_compiled":
            module = torch.compile(module, fullgraph=True)
        out[name] = (module, _cudnn(name != "native_bn"))
    return out


def mode_call(
    module: nn.Module,
    mode: str,
    x: Tensor,
    dy: Tensor,
    context: Callable[[], contextlib.AbstractContextManager],
    autocast: bool,
) -> Callable[[], object]:
    """One call of ``mode`` (gradients of the previous call dropped: no accumulation)."""
    device_type = x.device.type

    def scope() -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(context())
        if autocast:
            stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16))
        if mode == "eval_fwd":
            stack.enter_context(torch.no_grad())
        return stack

    params = list(module.parameters())

    def call() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        with scope():
            y = module(x)
            if mode == "train_fwd_bwd":
                y.backward(dy)

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    return call


def bench_case(
    case: GpuCase,
    modes: list[str],
    rounds: int,
    device: torch.device,
    contenders: tuple[str, ...],
    compile_state: dict[str, float],
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Timing rows of one case, every mode and contender."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = case.tensor(device, gen).requires_grad_()
    dy = case.tensor(device, gen)
    names = tuple(
        n
        for n in contenders
        if n != "l2bn_compiled" or compile_state["spent"] < compile_state["budget"]
    )
    if "l2bn_compiled" in names:
        torch._dynamo.reset()  # a fresh cache per case: no recompile limit reached
    modules = build_contenders(case.shape[1], device, case.layout, names)
    autocast = case.precision != "float32"
    rows = []
    for mode in modes:
        calls = {}
        for name, (module, context) in modules.items():
            module.train(mode != "eval_fwd")
            calls[name] = mode_call(module, mode, x, dy, context, autocast)
        warm, failed = {}, {}
        for name, call in list(calls.items()):  # warm-up (compiles), then one timed call
            start = time.perf_counter()
            try:
                call()
                _synchronize(device)
            except Exception as exc:  # e.g. a compile error: that contender's row says it
                traceback.print_exc(file=sys.stderr)
                failed[name] = _error_text(exc)
                del calls[name]
                continue
            finally:
                if name == "l2bn_compiled":
                    compile_state["spent"] += time.perf_counter() - start
            with _clock(device) as clock:
                call()
            _synchronize(device)
            warm[name] = clock.seconds()
        if not warm:  # every contender failed
            rows += [_failed_row(case, mode, name, text) for name, text in failed.items()]
            rows += _skipped_rows(case, mode, contenders, names)
            continue
        base = warm.get("cudnn_bn") or min(warm.values())
        reps = max(1, min(100, math.ceil(TARGET_ROUND_S / max(base, 1e-7))))
        samples = time_calls(calls, rounds, reps, device)
        kernels = {name: count_kernels(call, device) for name, call in calls.items()}
        medians = {name: statistics.median(s) for name, s in samples.items()}
        for name in names:
            if name in failed:
                rows.append(_failed_row(case, mode, name, failed[name]))
                continue
            s = samples[name]
            row: dict[str, Any] = {
                "case": case.name,
                "shape": list(case.shape),
                "precision": case.precision,
                "layout": case.layout,
                "mode": mode,
                "contender": name,
                "median_us": medians[name] * 1e6,
                "min_us": min(s) * 1e6,
                "max_us": max(s) * 1e6,
                "rounds": rounds,
                "reps": reps,
                "kernels": kernels[name],
            }
            refs = [medians[ref] for ref in ("cudnn_bn", "native_bn") if ref in medians]
            for ref in ("cudnn_bn", "native_bn"):
                if ref in medians:
                    row[f"ratio_to_{ref}"] = medians[name] / medians[ref]
            if refs:
                # The targets: the faster of the two BatchNorms of this run.
                row["ratio_to_best_bn"] = medians[name] / min(refs)
            rows.append(row)
        rows += _skipped_rows(case, mode, contenders, names)
    return rows


def _skipped_rows(
    case: GpuCase, mode: str, contenders: tuple[str, ...], names: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Rows of the contenders left out of this case (the compile budget spent)."""
    return [
        {"case": case.name, "mode": mode, "contender": n, "skipped": True}
        for n in contenders
        if n not in names
    ]


def _error_text(exc: BaseException) -> str:
    """``Type: first line of the message`` (the traceback goes to stderr)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _failed_row(case: GpuCase, mode: str, name: str, error: str) -> dict[str, Any]:
    """The row of a contender whose warm-up call raised (its error's type and first line)."""
    return {"case": case.name, "mode": mode, "contender": name, "error": error}


def failed_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of contenders and training steps that raised instead of running."""
    rows = results["timings"] + results.get("training_steps", [])
    return [row for row in rows if "error" in row]


# --------------------------------------------------------------------------------------
# training steps


def _sgd(model: nn.Module, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )


def _step_fn(model, opt, x, y, autocast: bool) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad(set_to_none=False)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def _model_pair(name: str, num_classes: int) -> tuple[nn.Module, nn.Module]:
    from l2bn.convert import convert_bn_to_l2bn
    from l2bn.models import create_model

    torch.manual_seed(0)
    bn = create_model(name, num_classes=num_classes, norm_layer="bn")
    return bn, convert_bn_to_l2bn(copy.deepcopy(bn))


def training_step_ratio(
    name: str,
    batch: int,
    image: int,
    num_classes: int,
    autocast: bool,
    channels_last: bool,
    rounds: int,
    device: torch.device,
) -> dict[str, Any]:
    """Median seconds of one SGD step, BatchNorm vs L2BN everywhere, and their ratio."""
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(batch, 3, image, image, generator=gen, device=device)
    y = torch.randint(0, num_classes, (batch,), generator=gen, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    steps = {}
    for label, model in zip(("bn", "l2bn"), _model_pair(name, num_classes), strict=True):
        model = model.to(device).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        steps[label] = _step_fn(model, _sgd(model, 1e-4), x, y, autocast)
    for step in steps.values():
        for _ in range(3):
            step()
    samples = time_calls(steps, rounds, 1, device)
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "model": name,
        "batch": batch,
        "autocast_bf16": autocast,
        "channels_last": channels_last,
        "rounds": rounds,
        **{f"{k}_median_ms": v * 1e3 for k, v in med.items()},
        "ratio": med["l2bn"] / med["bn"],
    }


def cuda_graph_step(
    name: str, batch: int, image: int, num_classes: int, rounds: int, device: torch.device
) -> dict[str, Any]:
    """Whether an L2BN training step (forward, backward, SGD) captures in a CUDA graph,
    and the replay's median time against the eager step's."""
    if device.type != "cuda":
        return {"model": name, "capturable": None, "reason": "not a CUDA device"}
    _bn, model = _model_pair(name, num_classes)
    model = model.to(device).train()
    gen = torch.Generator(device=device).manual_seed(2)
    x = torch.randn(batch, 3, image, image, generator=gen, device=device)
    y = torch.randint(0, num_classes, (batch,), generator=gen, device=device)
    step = _step_fn(model, _sgd(model, 5e-4), x, y, autocast=False)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step()
    except Exception as exc:  # report, do not fail the benchmark
        return {"model": name, "capturable": False, "reason": f"{type(exc).__name__}: {exc}"}
    samples = time_calls({"graph": graph.replay, "eager": step}, rounds, 1, device)
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "model": name,
        "batch": batch,
        "capturable": True,
        "replay_median_ms": med["graph"] * 1e3,
        "eager_median_ms": med["eager"] * 1e3,
    }


# --------------------------------------------------------------------------------------
# the command


def _meta(device: torch.device, rounds: int, quick: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "torch": torch.__version__,
        "device": str(device),
        "rounds": rounds,
        "quick": quick,
        "clock": "cuda events" if device.type == "cuda" else "wall",
        "l2bn_implementation": backends.status(device),
    }
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
        try:
            import triton

            meta["triton"] = triton.__version__
        except ImportError:
            meta["triton"] = None
    return meta


def run_benchmark(
    device: torch.device,
    *,
    quick: bool = False,
    rounds: int | None = None,
    case_text: str = "",
    modes: list[str] | None = None,
    contenders: tuple[str, ...] = CONTENDERS,
    e2e: bool = True,
    e2e_batch: int | None = None,
    compile_budget: float = COMPILE_BUDGET_S,
    cases_budget: float = CASES_BUDGET_S,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every selected case, then the training steps; returns the results dict. Cases that
    would start after ``cases_budget`` seconds are skipped (listed in the results)."""
    rounds = rounds or (2 if quick else 12)
    modes = list(modes or MODES)
    results: dict[str, Any] = {"meta": _meta(device, rounds, quick), "timings": []}
    compile_state = {"spent": 0.0, "budget": compile_budget}
    started = time.perf_counter()
    skipped = results["meta"]["cases_skipped"] = []
    for i, case in enumerate(cases(quick, case_text)):
        if time.perf_counter() - started > cases_budget:
            skipped.append(case.name)
            continue
        if log:
            log(f"{case.name}")
        results["timings"] += bench_case(case, modes, rounds, device, contenders, compile_state, i)
    results["meta"]["compile_seconds"] = compile_state["spent"]
    results["meta"]["cases_seconds"] = time.perf_counter() - started
    if e2e:
        if quick:
            specs = [("resnet20", e2e_batch or 8, 32, 100, False, False)]
        else:
            specs = [
                ("resnet50", 64, 224, 1000, True, True),
                ("resnet20", e2e_batch or 128, 32, 100, False, False),
            ]
        results["training_steps"] = []
        for name, batch, image, classes, autocast, cl in specs:
            if log:
                log(f"{name} training step")
            try:
                step = training_step_ratio(
                    name, batch, image, classes, autocast, cl, rounds, device
                )
            except Exception as exc:  # its row says so; the cases' rows are kept
                traceback.print_exc(file=sys.stderr)
                step = {"model": name, "batch": batch, "error": _error_text(exc)}
            results["training_steps"].append(step)
        results["cuda_graph"] = cuda_graph_step(
            "resnet20", e2e_batch or (8 if quick else 128), 32, 100, rounds, device
        )
    return results


def format_table(results: dict[str, Any]) -> str:
    """Fixed-width text of ``results`` (the dict that ``--json`` prints)."""
    meta = results["meta"]
    where = f"{meta['device']} ({meta['gpu']})" if meta.get("gpu") else meta["device"]
    note = quick_note(meta)
    lines = [
        *note,
        f"l2bn bench --device {where}: torch {meta['torch']}, triton {meta.get('triton')}, "
        f"{meta['rounds']} interleaved rounds, {meta['clock']}",
        "l2bn implementation:",
        *(f"  {line}" for line in str(meta["l2bn_implementation"]).splitlines()),
        "",
        *note,
        f"{'case':<26} {'mode':<14} {'contender':<14} {'median us':>10} {'kernels':>7} "
        f"{'x cuDNN':>8} {'x native':>8} {'x best':>8}",
    ]
    previous = None
    for row in results["timings"]:
        if previous is not None and row["case"] != previous:
            lines.append("")
        previous = row["case"]
        label = MODE_LABELS.get(row["mode"], row["mode"])
        if row.get("skipped"):
            lines.append(f"{row['case']:<26} {label:<14} {row['contender']:<14} skipped")
            continue
        if "error" in row:
            lines.append(
                f"{row['case']:<26} {label:<14} {row['contender']:<14} failed: {row['error']}"
            )
            continue
        kernels = "-" if row["kernels"] is None else str(row["kernels"])
        ratios = [
            f"{row[k]:>8.2f}" if k in row else f"{'-':>8}"
            for k in ("ratio_to_cudnn_bn", "ratio_to_native_bn", "ratio_to_best_bn")
        ]
        lines.append(
            f"{row['case']:<26} {label:<14} {row['contender']:<14} {row['median_us']:>10.1f} "
            f"{kernels:>7} {' '.join(ratios)}"
        )
    if note and results.get("training_steps"):
        lines += ["", *note]
    for step in results.get("training_steps", []):
        if "error" in step:
            lines += [
                "",
                f"{step['model']} SGD step, batch {step['batch']}: failed: {step['error']}",
            ]
            continue
        lines += [
            "",
            f"{step['model']} SGD step, batch {step['batch']}"
            f"{', bf16 autocast' if step['autocast_bf16'] else ''}"
            f"{', channels_last' if step['channels_last'] else ''}: BatchNorm "
            f"{step['bn_median_ms']:.2f} ms, L2BN {step['l2bn_median_ms']:.2f} ms, "
            f"ratio {step['ratio']:.3f}",
        ]
    graph = results.get("cuda_graph")
    if graph:
        if graph.get("capturable"):
            text = (
                f"captured; replay {graph['replay_median_ms']:.2f} ms vs eager "
                f"{graph['eager_median_ms']:.2f} ms"
            )
        else:
            text = f"not captured ({graph.get('reason')})"
        lines += ["", f"CUDA graph of an L2BN {graph['model']} training step: {text}"]
    lines.append(
        f"cases: {meta.get('cases_seconds', 0.0):.0f} s, of which torch.compile warm-ups "
        f"{meta.get('compile_seconds', 0.0):.0f} s"
    )
    if meta.get("cases_skipped"):
        lines.append(f"skipped (time budget): {', '.join(meta['cases_skipped'])}")
    return "\n".join(lines)


def require_cuda() -> torch.device:
    """The current CUDA device, or :class:`NoCudaError` with a one-line reason."""
    if not torch.cuda.is_available():
        raise NoCudaError(
            f"--device cuda needs a CUDA GPU, but torch {torch.__version__} sees none "
            "(torch.cuda.is_available() is False)"
        )
    return torch.device("cuda", torch.cuda.current_device())


def run(args: argparse.Namespace) -> int:
    """``l2bn bench --device cuda`` (options shared with the CPU benchmark)."""
    try:
        device = require_cuda()
    except NoCudaError as exc:
        print(f"l2bn bench: error: {exc}", file=sys.stderr)
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        print(
            f"l2bn bench: error: unknown mode(s) {unknown}; valid: {', '.join(MODES)}",
            file=sys.stderr,
        )
        return 2
    results = run_benchmark(
        device,
        quick=args.quick,
        rounds=args.rounds,
        case_text=args.cases,
        modes=modes,
        e2e=not args.no_e2e,
        e2e_batch=args.e2e_batch,
        log=None if args.json else lambda text: print(f"... {text}", file=sys.stderr, flush=True),
    )
    text = to_json(results)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text if args.json else format_table(results))
    failures = failed_rows(results)
    if failures:
        print(
            f"l2bn bench: {len(failures)} contender run(s) failed (rows marked failed)",
            file=sys.stderr,
        )
        return 1
    return 0
