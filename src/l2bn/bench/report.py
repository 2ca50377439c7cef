"""The benchmark's results as plain data, a text table, and JSON."""

from __future__ import annotations

import json
from typing import Any

from l2bn.bench.contenders import MODE_LABELS
from l2bn.bench.timing import Timing


def timing_row(case: str, mode: str, name: str, t: Timing, base: Timing, naive: Timing | None):
    """One result row; ratios are of medians taken in the same interleaved run."""
    row: dict[str, Any] = {
        "case": case,
        "mode": mode,
        "contender": name,
        "median_ms": t.median * 1e3,
        "min_ms": t.min * 1e3,
        "max_ms": t.max * 1e3,
        "rounds": len(t.samples),
        "ratio_to_bn": t.median / base.median,
    }
    if naive is not None and name == "l2bn":
        row["speedup_over_naive"] = naive.median / t.median
    return row


def quick_note(meta: dict[str, Any]) -> list[str]:
    """For a --quick run, the line saying that its numbers are no measurements (printed at
    the top and above each table of timings or ratios); nothing otherwise."""
    if not meta.get("quick"):
        return []
    rounds = f"{meta['rounds']} round{'' if meta['rounds'] == 1 else 's'}"
    return [
        f"--quick: {rounds} on tiny shapes, timings are not measurements "
        "(this only proves the command runs)"
    ]


def format_table(results: dict[str, Any]) -> str:
    """Fixed-width text table of ``results`` (the dict that ``--json`` prints)."""
    meta = results["meta"]
    note = quick_note(meta)
    lines = [
        *note,
        f"l2bn bench: torch {meta['torch']}, {meta['threads']} threads, "
        f"{meta['rounds']} interleaved rounds, {meta['clock']} clock, device {meta['device']}",
        f"contenders: {', '.join(meta.get('contenders', ['bn', 'naive', 'l2bn']))}",
        f"rounds: {meta.get('schedule', 'unknown')}",
        f"processor: {meta.get('processor', 'unknown')}",
        f"fused kernels' instruction set: {meta.get('kernel_isa') or 'none (l2bn._C not loaded)'}"
        f" (available: {', '.join(meta.get('kernel_isas') or []) or 'none'}; L2BN_CPU_ISA or "
        "--isa forces one)",
        f"ATen CPU capability: {meta.get('aten_capability', 'unknown')} (ATEN_CPU_CAPABILITY)",
        f"allocator: {meta.get('allocator', 'unknown')}",
        f"torch's huge-page allocations: {meta.get('huge_pages', 'unknown')}",
        "l2bn implementation:",
        *(f"  {line}" for line in str(meta.get("l2bn_implementation", "unknown")).splitlines()),
        "",
        *note,
        f"{'case':<24} {'mode':<14} {'contender':<7} {'median ms':>10} {'min-max ms':>17} "
        f"{'x BN':>6} {'naive/l2bn':>10}",
        "(bn_op, l2bn_op with --ops: the operators alone; their x BN is to bn_op)",
    ]
    previous = None
    for row in results["timings"]:
        if previous is not None and row["case"] != previous:
            lines.append("")
        previous = row["case"]
        speedup = row.get("speedup_over_naive")
        lines.append(
            f"{row['case']:<24} {MODE_LABELS.get(row['mode'], row['mode']):<14} "
            f"{row['contender']:<7} {row['median_ms']:>10.2f} "
            f"{row['min_ms']:>8.2f}-{row['max_ms']:<8.2f} {row['ratio_to_bn']:>6.2f} "
            f"{'' if speedup is None else f'{speedup:.2f}x':>10}"
        )
    lines += ["", "bytes saved for backward (unique storages; input itself included)"]
    lines.append(f"{'case':<24} {'contender':<6} {'saved MB':>10} {'input MB':>10} {'x BN':>6}")
    for row in results["saved"]:
        lines.append(
            f"{row['case']:<24} {row['contender']:<6} {row['saved_bytes'] / 1e6:>10.3f} "
            f"{row['input_bytes'] / 1e6:>10.3f} {row['ratio_to_bn']:>6.2f}"
        )
    e2e = results.get("resnet20")
    if e2e:
        lines += [
            "",
            *note,
            f"ResNet-20 (CIFAR-100 head) SGD step, batch {e2e['batch']}, "
            f"{e2e['rounds']} interleaved rounds:",
        ]
        for name in ("bn", "l2bn"):
            t = e2e[name]
            lines.append(
                f"  {name:<5} median {t['median_ms']:.1f} ms "
                f"(min {t['min_ms']:.1f}, max {t['max_ms']:.1f})"
            )
        lines.append(f"  L2BN / BN step time (ratio of medians): {e2e['ratio']:.3f}")
    compiled = results.get("resnet20_compiled")
    if compiled:
        lines += [
            "",
            *note,
            f"ResNet-20 SGD step under torch.compile(fullgraph=True), batch {compiled['batch']}, "
            f"{compiled['rounds']} interleaved rounds:",
        ]
        if "error" in compiled:
            lines.append(f"  not measured: {compiled['error']}")
        else:
            for name in ("bn", "l2bn"):
                t = compiled[name]
                lines.append(
                    f"  {name:<5} median {t['median_ms']:.1f} ms "
                    f"(min {t['min_ms']:.1f}, max {t['max_ms']:.1f})"
                )
            lines.append(f"  L2BN / BN step time (ratio of medians): {compiled['ratio']:.3f}")
            calls = ", ".join(f"{k} x{v}" for k, v in sorted(compiled["fused_calls"].items()))
            lines.append(f"  fused L2BN operators per compiled step: {calls or 'none'}")
    return "\n".join(lines)


def to_json(results: dict[str, Any]) -> str:
    return json.dumps(results, indent=2, sort_keys=False)
