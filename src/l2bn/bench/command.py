"""``l2bn bench``: interleaved timing of native BatchNorm, the naive composite and L2BN."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from l2bn import backends
from l2bn._files import make_writable_dir
from l2bn.bench import contenders as cn
from l2bn.bench import machine
from l2bn.bench.e2e import time_compiled_training_step, time_training_step
from l2bn.bench.report import format_table, timing_row, to_json
from l2bn.bench.saved import saved_bytes
from l2bn.bench.timing import schedule, time_interleaved

DEFAULT_ROUNDS = 18
"""Three whole periods of the rounds of three contenders (``l2bn.bench.timing.schedule``)."""

CPU_ONLY_OPTIONS: dict[str, str] = {
    "threads": "--threads",
    "shape": "--shape",
    "contenders": "--contenders",
    "clock": "--clock",
    "ops": "--ops",
    "compile": "--compile/--no-compile",
    "isa": "--isa",
    "aten_capability": "--aten-capability",
    "default_malloc": "--default-malloc",
}
"""The options the GPU benchmark (:func:`l2bn.bench.gpu.run`) does not read, by ``dest``:
each defaults to None, so that one given with ``--device cuda`` is seen and refused
(:func:`cpu_only_options_given`) rather than ignored."""

CPU_DEFAULTS: dict[str, Any] = {
    "threads": 2,
    "contenders": ",".join(cn.CONTENDERS),
    "clock": "wall",
    "ops": False,
    "default_malloc": False,
}
"""What the CPU benchmark runs with where a CPU-only option is not given (None)."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="tiny shapes and 2 rounds (proves the command runs)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default 2; CPU only)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"interleaved rounds (default {DEFAULT_ROUNDS}: three periods of the fair "
        "schedule; quick 2)",
    )
    parser.add_argument(
        "--cases", default="", help="only cases whose name contains this text, e.g. '56x56'"
    )
    parser.add_argument(
        "--shape",
        action="append",
        default=None,
        metavar="NxC[xL|xHxW]",
        help="time this shape instead of the standard cases (repeatable; 4-D in both "
        "layouts), e.g. --shape 16384x32 --shape 32x64x28x28 (CPU only)",
    )
    parser.add_argument(
        "--contenders",
        default=None,
        help=f"comma-separated subset of {', '.join(cn.CONTENDERS)} (default: all; bn and "
        "l2bn required); without naive, no call follows the composite, which evicts the "
        "caches (CPU only)",
    )
    parser.add_argument(
        "--modes",
        default=",".join(cn.MODES),
        help=f"comma-separated subset of {', '.join(cn.MODES)}",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default=None,
        help="wall: elapsed time (default); cpu: process CPU time, robust on a shared "
        "machine when used with --threads 1 (CPU only)",
    )
    parser.add_argument(
        "--ops",
        action="store_true",
        default=None,
        help="also time the operators alone (ATen's native_batch_norm vs the fused L2BN "
        "operators, no modules or autograd), each ratio to native_batch_norm (CPU only)",
    )
    parser.add_argument("--no-e2e", action="store_true", help="skip the ResNet-20 step")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time the ResNet-20 step under torch.compile(fullgraph=True) (default: on, "
        "off with --quick; compiling takes a minute or more; CPU only)",
    )
    parser.add_argument(
        "--e2e-batch",
        type=int,
        default=None,
        help="ResNet-20 batch size (>= 1; default 128, quick 4)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu (default) or cuda: the GPU benchmark of l2bn.bench.gpu (Triton kernels "
        "vs cuDNN and native BatchNorm), which refuses the options marked CPU only",
    )
    parser.add_argument(
        "--isa",
        choices=machine.ISAS,
        default=None,
        help="run the fused kernels at this instruction set (L2BN_CPU_ISA), and native "
        "BatchNorm at the same ATen capability unless --aten-capability says otherwise: "
        "measures a lower processor on this one (a fresh process is started; CPU only)",
    )
    parser.add_argument(
        "--aten-capability",
        choices=machine.ISAS,
        default=None,
        help="ATen's CPU capability (ATEN_CPU_CAPABILITY) for native BatchNorm and torch ops "
        "(CPU only)",
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        default=None,
        help="leave glibc's malloc settings alone (by default freed memory stays in the "
        "process, so that no contender page-faults memory another one returned; CPU only)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--output", default=None, help="also write the JSON to this file")


def _parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in cn.MODES]
    if not modes:
        raise ValueError(f"--modes {text!r}: no mode given; valid modes: {', '.join(cn.MODES)}")
    if unknown:
        raise ValueError(f"--modes: unknown mode(s) {unknown}; valid modes: {', '.join(cn.MODES)}")
    return modes


def _parse_contenders(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in cn.CONTENDERS]
    if unknown or not {"bn", "l2bn"} <= set(names):
        raise ValueError(
            f"--contenders {text!r}: a subset of {', '.join(cn.CONTENDERS)} that holds bn and l2bn"
        )
    return [n for n in cn.CONTENDERS if n in names]


def bench_case(
    case: cn.Case,
    modes: list[str],
    rounds: int,
    seed: int,
    clock: str = "wall",
    ops: bool = False,
    contenders: tuple[str, ...] = cn.CONTENDERS,
) -> tuple[list, list]:
    """Timing rows and saved-bytes rows of one case (with ``ops``, also the operators
    alone, interleaved among themselves after the modules)."""
    bench = cn.prepare(case, contenders, seed)
    x, dy, modules, drop_grads = bench.x, bench.dy, bench.modules, bench.drop_grads
    rows = []
    for mode in modes:
        for m in modules.values():
            m.train(mode != "eval_fwd")
        calls = {name: cn.mode_call(m, mode, x, dy) for name, m in modules.items()}
        timings = time_interleaved(calls, rounds, warmup=1, before=drop_grads, clock=clock)
        for name, t in timings.items():
            naive = timings.get("naive")
            rows.append(timing_row(case.name, mode, name, t, timings["bn"], naive))
        if ops:
            calls = cn.op_calls(mode, x, dy)
            timings = time_interleaved(calls, rounds, warmup=1, clock=clock)
            for name, t in timings.items():
                rows.append(timing_row(case.name, mode, name, t, timings["bn_op"], None))

    saved = {}
    for name, m in modules.items():
        m.train()
        saved[name] = saved_bytes(lambda m=m: m(x))
    saved_rows = [
        {
            "case": case.name,
            "contender": name,
            "saved_bytes": b,
            "input_bytes": x.numel() * x.element_size(),
            "ratio_to_bn": b / saved["bn"],
        }
        for name, b in saved.items()
    ]
    return rows, saved_rows


def selected_cases(args: argparse.Namespace) -> list[cn.Case]:
    """The cases to time: the --shape cases or the standard ones, those whose name holds
    --cases; ``ValueError`` when --cases matches none."""
    shapes = [cn.parse_shape(text) for text in getattr(args, "shape", None) or []]
    pool = cn.shape_cases(shapes) if shapes else cn.cases(args.quick)
    selected = [c for c in pool if args.cases in c.name]
    if not selected:
        names = ", ".join(c.name for c in pool)
        raise ValueError(f"--cases {args.cases!r} matches no case; the cases: {names}")
    return selected


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run every selected case (and the ResNet-20 step); return the results dict."""
    modes = _parse_modes(args.modes)
    contenders = tuple(_parse_contenders(getattr(args, "contenders", ",".join(cn.CONTENDERS))))
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else DEFAULT_ROUNDS)
    selected = selected_cases(args)
    allocator = "system default" if args.default_malloc else machine.keep_freed_memory()
    results: dict[str, Any] = {
        "meta": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "rounds": rounds,
            "schedule": schedule(len(contenders), rounds),
            "device": "cpu",
            "clock": args.clock,
            "contenders": list(contenders),
            "quick": bool(args.quick),
            "l2bn_implementation": backends.status("cpu"),
            **machine.describe(),
            "allocator": allocator,
        },
        "timings": [],
        "saved": [],
    }
    for i, case in enumerate(selected):
        ops = bool(getattr(args, "ops", False))
        rows, saved_rows = bench_case(
            case, modes, rounds, seed=i, clock=args.clock, ops=ops, contenders=contenders
        )
        results["timings"] += rows
        results["saved"] += saved_rows
    if not args.no_e2e:
        batch = args.e2e_batch if args.e2e_batch is not None else (4 if args.quick else 128)
        t = time_training_step(batch, rounds, clock=args.clock)
        results["resnet20"] = {
            "batch": batch,
            "rounds": rounds,
            **{
                name: {"median_ms": v.median * 1e3, "min_ms": v.min * 1e3, "max_ms": v.max * 1e3}
                for name, v in t.items()
            },
            "ratio": t["l2bn"].median / t["bn"].median,
        }
    if not args.no_e2e and (args.compile if args.compile is not None else not args.quick):
        batch = args.e2e_batch if args.e2e_batch is not None else (4 if args.quick else 128)
        c = time_compiled_training_step(batch, rounds, clock=args.clock)
        row: dict[str, Any] = {"batch": batch, "rounds": rounds}
        if "error" in c:
            row["error"] = c["error"]
        else:
            t = c["timings"]
            row.update(
                {
                    name: {
                        "median_ms": v.median * 1e3,
                        "min_ms": v.min * 1e3,
                        "max_ms": v.max * 1e3,
                    }
                    for name, v in t.items()
                }
            )
            row["ratio"] = t["l2bn"].median / t["bn"].median
            row["fused_calls"] = c["fused_calls"]
        results["resnet20_compiled"] = row
    return results


def check_options(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` for a bad option of the CPU benchmark (before any work, and
    before the process that --isa starts)."""
    if args.rounds is not None and args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if getattr(args, "ops", False) and not backends.available("cpu"):
        raise ValueError(
            "--ops times the fused operators, which are unavailable: "
            f"{backends.unavailable_reason('cpu')}"
        )
    if args.e2e_batch is not None and args.e2e_batch < 1:
        raise ValueError(f"--e2e-batch must be >= 1, got {args.e2e_batch}")
    _parse_modes(args.modes)
    _parse_contenders(getattr(args, "contenders", ",".join(cn.CONTENDERS)))
    selected_cases(args)


def check_output(path: str | None) -> None:
    """Raise ``ValueError`` when ``--output`` cannot take the file: checked before any work,
    since the file is written after the whole benchmark (its folder is created if missing,
    and a probe file written and removed in it)."""
    if not path:
        return
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"--output {path}: cannot write the JSON there (a folder of that name)")
    try:
        make_writable_dir(target.parent)
    except OSError as err:
        reason = err.strerror or str(err)
        if isinstance(err, FileExistsError) or (
            target.parent.exists() and not target.parent.is_dir()
        ):
            reason = f"{target.parent} is a file"
        raise ValueError(f"--output {path}: cannot write the JSON there ({reason})") from None


def cpu_only_options_given(args: argparse.Namespace) -> list[str]:
    """The flags of the :data:`CPU_ONLY_OPTIONS` given in ``args`` (those not None)."""
    return [
        flag for dest, flag in CPU_ONLY_OPTIONS.items() if getattr(args, dest, None) is not None
    ]


def with_cpu_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with each CPU-only option not given set to :data:`CPU_DEFAULTS`."""
    resolved = dict(vars(args))
    for dest, default in CPU_DEFAULTS.items():
        if resolved.get(dest) is None:
            resolved[dest] = default
    return argparse.Namespace(**resolved)


def run(args: argparse.Namespace) -> int:
    try:
        check_output(getattr(args, "output", None))
    except ValueError as error:
        print(f"l2bn bench: error: {error}", file=sys.stderr)
        return 2
    if getattr(args, "device", "cpu") == "cuda":
        given = cpu_only_options_given(args)
        if given:
            # As argparse reports a bad option, before anything touches CUDA.
            what = "is an option" if len(given) == 1 else "are options"
            print(
                f"l2bn bench: error: {', '.join(given)} {what} of the CPU benchmark only, "
                "which --device cuda would ignore",
                file=sys.stderr,
            )
            return 2
        from l2bn.bench import gpu

        return gpu.run(args)
    args = with_cpu_defaults(args)
    try:
        check_options(args)
        # An --isa the processor or the build lacks is a bad option too.
        env = machine.forced_environment(args.isa, args.aten_capability)
    except ValueError as error:
        # As argparse reports a bad option: one line, exit status 2.
        print(f"l2bn bench: error: {error}", file=sys.stderr)
        return 2
    if env is not None and getattr(args, "_forced", False):
        # The process started for them still runs others (ATen ignores a capability above
        # the processor's): another process with that environment would do the same.
        asked = " ".join(
            f"{flag} {value}"
            for flag, value in (("--isa", args.isa), ("--aten-capability", args.aten_capability))
            if value is not None
        )
        print(
            f"l2bn bench: error: {asked}: the process started for it runs the fused kernels "
            f"at {machine.kernel_isa()} and ATen at {machine.aten_capability()} (the "
            "processor or torch's build lacks the instruction set asked for)",
            file=sys.stderr,
        )
        return 2
    if env is not None:
        # Both instruction sets are fixed at load time: rerun in a process that loads them.
        options = {k: v for k, v in vars(args).items() if not k.startswith("_")}
        child = [sys.executable, "-m", "l2bn.bench.command", json.dumps(options)]
        return subprocess.run(child, env=env, check=False).returncode
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        results = run_benchmark(args)
    finally:
        torch.set_num_threads(previous)
    text = to_json(results)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text if args.json else format_table(results))
    return 0


if __name__ == "__main__":
    # The process started by run() for --isa / --aten-capability: the options as JSON.
    sys.exit(run(argparse.Namespace(**json.loads(sys.argv[1]), _forced=True)))
