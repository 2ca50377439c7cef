"""``l2bn bench``: the quick mode runs once end to end; helpers are checked on their own.

No timing assertion: only the structure of the results and the bytes saved for backward.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from _torch_ops_calls import record_torch_ops_calls
from l2bn import L2BatchNorm2d, backends
from l2bn.bench import contenders as cn
from l2bn.bench import machine
from l2bn.bench.report import format_table
from l2bn.bench.saved import saved_bytes
from l2bn.bench.timing import (
    MAX_CONTENDERS,
    balanced_orders,
    fair_period,
    period,
    round_orders,
    schedule,
    time_interleaved,
)
from l2bn.cli import main


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    threads = torch.get_num_threads()
    assert main(["bench", "--quick", "--threads", "1", "--output", str(path)]) == 0
    assert torch.get_num_threads() == threads  # restored
    return json.loads(path.read_text())


def test_quick_covers_every_case_mode_and_contender(quick_results):
    expected_cases = {c.name for c in cn.cases(quick=True)}
    seen = {(r["case"], r["mode"], r["contender"]) for r in quick_results["timings"]}
    assert seen == {
        (case, mode, name) for case in expected_cases for mode in cn.MODES for name in cn.CONTENDERS
    }
    assert any(name.endswith("CL") for name in expected_cases)
    for row in quick_results["timings"]:
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        if row["contender"] == "bn":
            assert row["ratio_to_bn"] == pytest.approx(1.0)
        if row["contender"] == "l2bn":
            assert row["speedup_over_naive"] > 0


def test_quick_reports_saved_bytes_and_resnet20(quick_results):
    saved = {(r["case"], r["contender"]): r for r in quick_results["saved"]}
    for case in {c.name for c in cn.cases(quick=True)}:
        assert saved[(case, "naive")]["saved_bytes"] > saved[(case, "bn")]["saved_bytes"]
    e2e = quick_results["resnet20"]
    assert e2e["ratio"] == pytest.approx(e2e["l2bn"]["median_ms"] / e2e["bn"]["median_ms"])
    assert quick_results["meta"]["threads"] == 1
    assert quick_results["meta"]["l2bn_implementation"] == backends.status("cpu")


def test_table_output(capsys):
    assert main(["bench", "--quick", "--threads", "1", "--no-e2e", "--cases", "1d"]) == 0
    out = capsys.readouterr().out
    assert "1d 16x8" in out and "train fwd+bwd" in out and "naive/l2bn" in out
    assert "2d" not in out.split("bytes saved")[0].split("\n", 2)[2]


def test_shape_option_times_the_given_shapes(tmp_path):
    """--shape replaces the standard cases: 2-D and 3-D contiguous, 4-D in both layouts."""
    path = tmp_path / "shapes.json"
    args = ["bench", "--quick", "--threads", "1", "--no-e2e", "--modes", "train_fwd"]
    args += ["--shape", "6x5", "--shape", "4x3x7", "--shape", "4x3x5x5", "--output", str(path)]
    assert main(args) == 0
    results = json.loads(path.read_text())
    cases = {r["case"] for r in results["timings"]}
    assert cases == {"1d 6x5", "1d 4x3x7", "2d 4x3x5x5", "2d 4x3x5x5 CL"}


@pytest.mark.parametrize(
    "option",
    [
        *(["--shape", text] for text in ["6", "6x0", "1x5", "ax5", "2x3x4x5x6"]),
        *(["--contenders", text] for text in ["bn", "naive,l2bn", "bn,l2bn,other"]),
        ["--modes", "backward"],
        ["--modes", ","],
        ["--threads", "0"],
        ["--rounds", "0"],
        ["--rounds", "-1"],
        ["--e2e-batch", "0"],
        ["--e2e-batch", "-1"],
        ["--cases", "no such case"],
    ],
)
def test_bad_option_is_one_line_and_exit_2(option, capsys):
    """As argparse reports a bad option: ``l2bn bench: error: ...`` naming it, exit 2,
    before any work (no traceback, no timing)."""
    assert main(["bench", "--quick", "--no-e2e", *option]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err.startswith("l2bn bench: error: ") and option[0] in err and "\n" not in err


@pytest.mark.parametrize("where", ["under a file", "a folder"])
def test_an_output_that_cannot_be_written_is_one_line_and_exit_2_before_any_work(
    where, tmp_path, capsys
):
    """--output is written after the whole benchmark: a path that cannot take the file
    must stop the command at once, not end a long run with a traceback and no results."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    output = blocker / "bench.json" if where == "under a file" else tmp_path
    assert main(["bench", "--quick", "--no-e2e", "--output", str(output)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err.startswith(f"l2bn bench: error: --output {output}: ") and "\n" not in err


def test_isa_the_processor_lacks_is_one_line_and_exit_2(monkeypatch, capsys):
    """On a processor without AVX-512, --isa avx512 is a bad option, not a traceback."""
    if not machine.kernel_isas():
        pytest.skip("the fused kernels are not built")
    monkeypatch.setattr(machine, "kernel_isas", lambda: ["avx2", "default"])
    monkeypatch.setattr(machine, "kernel_isa", lambda: "avx2")
    assert main(["bench", "--quick", "--no-e2e", "--isa", "avx512"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("l2bn bench: error: --isa avx512") and "\n" not in err


def test_contenders_option_leaves_the_naive_composite_out(tmp_path):
    path = tmp_path / "two.json"
    args = ["bench", "--quick", "--threads", "1", "--no-e2e", "--cases", "1d"]
    assert main([*args, "--contenders", "bn,l2bn", "--output", str(path)]) == 0
    results = json.loads(path.read_text())
    assert {r["contender"] for r in results["timings"]} == {"bn", "l2bn"}
    assert {r["contender"] for r in results["saved"]} == {"bn", "l2bn"}
    assert results["meta"]["contenders"] == ["bn", "l2bn"]
    assert all("speedup_over_naive" not in r for r in results["timings"])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_l2bn_saves_input_plus_per_row_statistics(layout):
    """Bytes saved for backward <= BatchNorm's + O(N * C) (BatchNorm + O(N * C))."""
    n, c = 8, 16
    x = torch.randn(n, c, 12, 12)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    bn, l2 = torch.nn.BatchNorm2d(c), L2BatchNorm2d(c)
    if layout == "channels_last":
        bn, l2 = bn.to(memory_format=torch.channels_last), l2.to(memory_format=torch.channels_last)
    bn_bytes, l2_bytes = saved_bytes(lambda: bn(x)), saved_bytes(lambda: l2(x))
    assert bn_bytes >= x.numel() * 4
    assert l2_bytes <= bn_bytes + 8 * n * c * 8  # a few (N, C) tensors at most
    naive = cn.build("naive", c, 4)
    assert saved_bytes(lambda: naive(x)) >= bn_bytes + x.numel() * 4


def test_saved_bytes_counts_shared_storage_once():
    x = torch.randn(100, requires_grad=True)
    assert saved_bytes(lambda: x * x) == 400
    assert saved_bytes(lambda: (x * 2).exp()) == 400  # exp saves its output only


def _follows(sequence: list[str]) -> dict[tuple[str, str], int]:
    """How often each ordered pair of neighbours occurs in ``sequence``."""
    counts: dict[tuple[str, str], int] = {}
    for pair in itertools.pairwise(sequence):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def _since_last(cyclic: list[str], who: str, other: str) -> int:
    """How many calls of ``who`` in the cyclic sequence had ``other`` run since its
    previous call."""
    n, count = len(cyclic), 0
    for i, name in enumerate(cyclic):
        if name != who:
            continue
        j = i - 1
        while cyclic[j % n] != who:
            if cyclic[j % n] == other:
                count += 1
                break
            j -= 1
    return count


@pytest.mark.parametrize("count", [1, 2, 3])
def test_fair_period_gives_every_contender_the_same_histories(count):
    cycle = fair_period(count)
    assert period(count) == cycle
    assert all(sorted(order) == list(range(count)) for order in cycle)
    calls = [i for order in cycle for i in order]
    n = len(calls)
    histories = []  # (contender, what ran since its previous call), by another route
    for i, who in enumerate(calls):
        back = next(d for d in range(1, n + 1) if calls[(i - d) % n] == who)
        histories.append((who, tuple(calls[(i - d) % n] for d in range(back - 1, 0, -1))))
    for names in itertools.permutations(range(count)):
        renamed = sorted((names[w], tuple(names[e] for e in h)) for w, h in histories)
        assert renamed == sorted(histories)


def test_the_three_contenders_of_l2bn_bench_see_the_naive_composite_alike():
    names = ["bn", "naive", "l2bn"]
    calls = [name for order in round_orders(names, rounds=6) for name in order]
    cyclic = _follows(calls + calls[:1])
    assert cyclic[("naive", "bn")] == cyclic[("naive", "l2bn")] > 0
    assert cyclic[("l2bn", "bn")] == cyclic[("bn", "l2bn")] > 0
    # What made L2BN faster than BatchNorm by construction in the balanced-predecessor
    # schedule: calls of L2BN with no naive composite since its previous call.
    assert _since_last(calls, "bn", "naive") == _since_last(calls, "l2bn", "naive")
    # All permutations cycled (the schedule before): L2BN after the composite 3 times in
    # 6 rounds, BatchNorm twice.
    old = [name for order in itertools.permutations(names) for name in order]
    old_follows = _follows(old + old[:1])
    assert (old_follows[("naive", "l2bn")], old_follows[("naive", "bn")]) == (3, 2)


@pytest.mark.parametrize("count", range(4, MAX_CONTENDERS + 1))
def test_more_contenders_get_each_other_just_before_them_equally_often(count):
    assert fair_period(count) is None
    cycle = balanced_orders(count)
    assert len(cycle) == count - 1 and period(count) == cycle
    assert all(sorted(order) == list(range(count)) for order in cycle)
    calls = [str(i) for order in cycle for i in order]
    # Cyclically, every ordered pair of distinct contenders once, never one after itself.
    assert _follows(calls + calls[:1]) == {
        (str(a), str(b)): 1 for a in range(count) for b in range(count) if a != b
    }
    names = [f"c{i}" for i in range(count)]
    assert round_orders(names, rounds=count - 1) == [
        tuple(names[i] for i in order) for order in cycle
    ]


def test_balanced_orders_refuse_counts_out_of_range():
    for count in (0, MAX_CONTENDERS + 1):
        with pytest.raises(ValueError, match="contenders"):
            balanced_orders(count)
    with pytest.raises(ValueError, match="contender"):
        round_orders([], rounds=1)


def test_schedule_says_whether_the_rounds_end_on_a_whole_period():
    assert (
        schedule(3, 30)
        == "every contender the same history (period 6 rounds; 30 rounds = 5 periods)"
    )
    assert schedule(2, 15).endswith("(period 1 round; 15 rounds = 15 periods)")
    partial = schedule(3, 15)
    assert "2 periods and 3 more, not balanced (use a multiple of 6)" in partial
    assert schedule(5, 12).startswith("each contender after each other equally often (period 4")


def test_the_bench_default_rounds_end_on_a_whole_period(quick_results):
    from l2bn.bench.command import DEFAULT_ROUNDS

    assert "not balanced" not in schedule(len(cn.CONTENDERS), DEFAULT_ROUNDS)
    assert "not balanced" not in schedule(2, DEFAULT_ROUNDS)
    meta = quick_results["meta"]
    assert meta["schedule"] == schedule(len(meta["contenders"]), meta["rounds"])
    assert f"rounds: {meta['schedule']}" in format_table(quick_results)


def test_time_interleaved_runs_the_fair_rounds_and_the_before_hook():
    order: list[str] = []
    hooks: list[int] = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
    result = time_interleaved(calls, rounds=6, warmup=1, before=lambda: hooks.append(1))
    assert len(order) == len(hooks) == 21
    assert [tuple(order[i : i + 3]) for i in range(3, 21, 3)] == round_orders("abc", 6)
    assert tuple(order[:3]) == round_orders("abc", 6)[-1]  # the warm-up: the cycle's last
    assert all(len(t.samples) == 6 for t in result.values())
    with pytest.raises(ValueError, match="rounds"):
        time_interleaved(calls, rounds=0)


def test_naive_composite_is_the_reference_formula():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 4) * torch.linspace(0.5, 4, 6).view(-1, 1, 1, 1)
    naive, l2 = cn.build("naive", 3, 4), cn.build("l2bn", 3, 4)
    torch.testing.assert_close(naive(x), l2(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="valid names"):
        cn.build("gn", 3, 4)


def test_meta_names_processor_isa_and_aten_capability(quick_results):
    meta = quick_results["meta"]
    assert meta["processor"] and meta["aten_capability"] == (
        torch.backends.cpu.get_cpu_capability().lower()
    )
    if backends.available("cpu"):
        assert meta["kernel_isa"] == torch.ops.l2bn.cpu_isa()
        assert meta["kernel_isas"] == list(torch.ops.l2bn.cpu_isas())


def test_huge_pages_report_torchs_switch_and_the_kernel_mode(monkeypatch, tmp_path):
    mode = tmp_path / "enabled"
    mode.write_text("always [madvise] never\n")
    monkeypatch.setattr(machine, "_THP_MODE", str(mode))
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    assert machine.huge_pages() == "off (THP_MEM_ALLOC_ENABLE unset, kernel THP mode madvise)"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    assert machine.huge_pages() == "on (THP_MEM_ALLOC_ENABLE '1', kernel THP mode madvise)"
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE")
    mode.write_text("[always] madvise never\n")
    assert machine.huge_pages().endswith(
        "mode always: the kernel may back large mappings with huge pages anyway)"
    )
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    mode.write_text("always madvise [never]\n")
    assert machine.huge_pages().startswith("off (THP_MEM_ALLOC_ENABLE '1', kernel THP mode never")
    monkeypatch.setattr(machine, "_THP_MODE", str(tmp_path / "missing"))
    assert machine.huge_pages().endswith("kernel THP mode unknown)")


def test_the_header_names_the_huge_page_setting(quick_results):
    assert quick_results["meta"]["huge_pages"] == machine.huge_pages()
    assert f"torch's huge-page allocations: {machine.huge_pages()}" in format_table(quick_results)


@pytest.mark.skipif(not backends.available("cpu"), reason="fused kernels not built")
def test_forced_isa_runs_in_a_process_that_reports_it(tmp_path, capfd):
    """--isa default: a fresh process with the baseline kernels and ATen's default capability."""
    path = tmp_path / "bench.json"
    args = ["bench", "--quick", "--threads", "1", "--no-e2e", "--cases", "1d", "--isa", "default"]
    assert main([*args, "--output", str(path)]) == 0
    meta = json.loads(path.read_text())["meta"]
    assert (meta["kernel_isa"], meta["aten_capability"]) == ("default", "default")
    assert "fused kernels' instruction set: default" in capfd.readouterr().out
    # A bad option fails here, not in the process --isa starts.
    assert main(["bench", "--quick", "--modes", "backward", "--isa", "default"]) == 2
    captured = capfd.readouterr()
    assert "l2bn bench: error: --modes" in captured.err and "Traceback" not in captured.err


@pytest.mark.skipif(not backends.available("cpu"), reason="fused kernels not built")
@pytest.mark.parametrize(
    ("option", "kernels", "aten"),
    [
        # ATen ignores an ATEN_CPU_CAPABILITY above the processor's (an AVX2-only one here)
        (["--aten-capability", "avx512"], "avx512", "avx2"),
        (["--isa", "avx2"], "avx512", "avx2"),
    ],
)
def test_the_process_isa_starts_does_not_start_another_one(
    option, kernels, aten, monkeypatch, capsys
):
    """The process that --isa / --aten-capability starts, still running other instruction
    sets than asked for, must say so and stop: starting another process with the same
    environment would repeat that without end (one more torch process each time)."""
    import runpy
    import subprocess
    import sys
    import warnings

    from l2bn.bench.command import with_cpu_defaults

    args = with_cpu_defaults(_bench_parser().parse_args(["--quick", "--no-e2e", *option]))
    options = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    monkeypatch.setattr(machine, "kernel_isa", lambda: kernels)
    monkeypatch.setattr(machine, "aten_capability", lambda: aten)
    started = []

    def start(cmd, **kwargs):
        started.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", start)
    monkeypatch.setattr(sys, "argv", ["l2bn.bench.command", json.dumps(options)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is imported
        with pytest.raises(SystemExit) as exit_:
            runpy.run_module("l2bn.bench.command", run_name="__main__")
    assert started == []
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"l2bn bench: error: {option[0]} {option[1]}") and "\n" not in err
    assert f"kernels at {kernels}" in err and f"ATen at {aten}" in err


def test_quick_skips_the_compiled_step_and_the_table_reports_it(quick_results):
    assert "resnet20_compiled" not in quick_results  # --quick: off unless --compile
    results = dict(quick_results)
    ms = {"median_ms": 2.0, "min_ms": 1.0, "max_ms": 3.0}
    results["resnet20_compiled"] = {
        "batch": 4,
        "rounds": 2,
        "bn": ms,
        "l2bn": ms,
        "ratio": 1.0,
        "fused_calls": {"l2bn::train_forward": 19, "l2bn::train_backward": 19},
    }
    text = format_table(results)
    assert "torch.compile(fullgraph=True)" in text
    assert "l2bn::train_backward x19, l2bn::train_forward x19" in text
    results["resnet20_compiled"] = {"batch": 4, "rounds": 2, "error": "Unsupported: reason"}
    assert "not measured: Unsupported: reason" in format_table(results)


def test_compiled_step_reports_a_compiler_error(monkeypatch):
    from l2bn.bench import e2e

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    assert e2e.time_compiled_training_step(2, 1) == {"error": "RuntimeError: no compiler here"}


def test_compiled_step_gives_both_networks_the_same_untimed_calls(monkeypatch):
    # The profiled step that counts the fused operators must not be one more warm-up call
    # of the L2BN network than BatchNorm's before the timed rounds.
    from l2bn.bench import e2e

    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: model)
    calls = {"bn": 0, "l2bn": 0}
    step = e2e._step

    def counted(model, opt, x, y):
        name = "l2bn" if any(isinstance(m, L2BatchNorm2d) for m in model.modules()) else "bn"
        run = step(model, opt, x, y)

        def call():
            calls[name] += 1
            run()

        return call

    monkeypatch.setattr(e2e, "_step", counted)
    before_timing = {}
    time_interleaved = e2e.time_interleaved

    def timed(*args, **kwargs):
        before_timing.update(calls)
        return time_interleaved(*args, **kwargs)

    monkeypatch.setattr(e2e, "time_interleaved", timed)
    result = e2e.time_compiled_training_step(2, 1)
    assert "error" not in result
    assert before_timing["bn"] == before_timing["l2bn"]
    assert calls["bn"] + 1 == calls["l2bn"]  # the profiled step, after the timed rounds


@pytest.mark.skipif(not backends.available("cpu"), reason="fused kernels not built")
def test_ops_times_the_operators_alone(tmp_path):
    path = tmp_path / "bench.json"
    args = ["bench", "--quick", "--threads", "1", "--no-e2e", "--cases", "1d", "--ops"]
    assert main([*args, "--output", str(path)]) == 0
    rows = json.loads(path.read_text())["timings"]
    for mode in cn.MODES:
        ops = {r["contender"]: r for r in rows if r["mode"] == mode}
        assert set(ops) == {*cn.CONTENDERS, *cn.OP_CONTENDERS}
        assert ops["bn_op"]["ratio_to_bn"] == pytest.approx(1.0)
        assert ops["l2bn_op"]["ratio_to_bn"] == pytest.approx(
            ops["l2bn_op"]["median_ms"] / ops["bn_op"]["median_ms"]
        )


@pytest.mark.skipif(not backends.available("cpu"), reason="fused kernels not built")
@pytest.mark.parametrize("mode", cn.MODES)
def test_ops_call_both_operators_through_the_same_python_path(mode, monkeypatch):
    """--ops compares the kernels: a call through ``torch.ops`` (an OpOverload's Python
    ``__call__`` and the boxed call, about 2 us more than torch's own binding) made by one
    contender and not by the other would be counted against it in every ratio."""
    through_torch_ops = record_torch_ops_calls(monkeypatch)
    gen = torch.Generator().manual_seed(0)
    x, dy = torch.randn(8, 4, 3, 3, generator=gen), torch.randn(8, 4, 3, 3, generator=gen)
    counts = {}
    for name, call in cn.op_calls(mode, x, dy).items():
        through_torch_ops.clear()
        call()
        counts[name] = list(through_torch_ops)
    assert len(counts["bn_op"]) == len(counts["l2bn_op"]), counts


def test_ops_without_the_fused_kernels_is_an_error_not_a_silent_drop(monkeypatch, capsys):
    """--ops asks for the fused operators' timings: without them, a one-line error (exit 2)
    rather than tables that silently lack the rows asked for."""
    monkeypatch.setattr(backends, "available", lambda name: name != "cpu")
    assert main(["bench", "--quick", "--no-e2e", "--ops"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("l2bn bench: error: --ops") and "unavailable" in err


def test_the_allocator_line_names_a_preloaded_allocator(monkeypatch):
    """Under LD_PRELOAD=libjemalloc.so.2 (or tcmalloc, mimalloc) the header must not claim
    glibc's settings, which do not reach the tensors' memory then."""
    monkeypatch.setattr(
        machine, "_mapped_files", lambda: ["/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"]
    )
    assert machine.preloaded_allocator() == "jemalloc"
    monkeypatch.delenv("MALLOC_CONF", raising=False)
    assert machine.keep_freed_memory() == (
        "jemalloc (preloaded; its own settings; glibc's thresholds do not apply)"
    )
    monkeypatch.setenv("MALLOC_CONF", "dirty_decay_ms:-1")
    assert "MALLOC_CONF='dirty_decay_ms:-1'" in machine.keep_freed_memory()
    monkeypatch.setattr(machine, "_mapped_files", lambda: ["/usr/lib/libc.so.6"])
    assert machine.preloaded_allocator() is None


def test_this_process_maps_its_own_libraries():
    files = machine._mapped_files()
    if not files:
        pytest.skip("no /proc/self/maps here")
    assert any("libtorch" in path for path in files)  # torch is imported


# The options the GPU benchmark reads (l2bn.bench.gpu.run); every other one is CPU only.
GPU_OPTIONS = {"help", "quick", "rounds", "cases", "modes", "no_e2e", "e2e_batch", "device"}
GPU_OPTIONS |= {"json", "output"}


def _bench_parser():
    from l2bn_cli import build_parser

    parser = build_parser("bench")
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["bench"]


def test_every_option_is_either_read_by_the_gpu_benchmark_or_cpu_only():
    """A new option must be classified: one the GPU benchmark ignores is CPU only, and
    defaults to None so that ``--device cuda`` sees it given."""
    from l2bn.bench.command import CPU_ONLY_OPTIONS

    parser = _bench_parser()
    dests = {a.dest for a in parser._actions}
    assert dests == GPU_OPTIONS | set(CPU_ONLY_OPTIONS), dests ^ (
        GPU_OPTIONS | set(CPU_ONLY_OPTIONS)
    )
    assert not GPU_OPTIONS & set(CPU_ONLY_OPTIONS)
    defaults = vars(parser.parse_args([]))
    assert all(defaults[dest] is None for dest in CPU_ONLY_OPTIONS), defaults


def test_cpu_only_options_get_their_defaults_on_the_cpu():
    from l2bn.bench.command import with_cpu_defaults

    args = with_cpu_defaults(_bench_parser().parse_args([]))
    assert (args.threads, args.clock, args.ops, args.default_malloc) == (2, "wall", False, False)
    assert args.contenders == ",".join(cn.CONTENDERS)
    assert with_cpu_defaults(_bench_parser().parse_args(["--threads", "1"])).threads == 1


@pytest.mark.parametrize(
    "option",
    [
        ["--threads", "2"],
        ["--threads", "8"],
        ["--shape", "8x4"],
        ["--contenders", "bn,l2bn"],
        ["--clock", "wall"],
        ["--ops"],
        ["--compile"],
        ["--no-compile"],
        ["--isa", "default"],
        ["--aten-capability", "default"],
        ["--default-malloc"],
    ],
)
def test_cpu_only_option_with_device_cuda_is_one_line_and_exit_2(option, monkeypatch, capsys):
    """Refused before anything touches CUDA (no GPU needed), naming the option; even a
    value equal to the CPU default (``--threads 2``) is refused, not ignored."""
    from l2bn.bench import gpu

    def touched(*_args, **_kwargs):
        raise AssertionError("the GPU benchmark was reached")

    monkeypatch.setattr(gpu, "run", touched)
    monkeypatch.setattr(torch.cuda, "is_available", touched)
    assert main(["bench", "--device", "cuda", "--quick", *option]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err.startswith("l2bn bench: error: ") and "\n" not in err, err
    assert option[0] in err and "CPU benchmark only" in err and "--device cuda" in err


def test_cpu_only_options_with_device_cuda_are_all_named(monkeypatch, capsys):
    from l2bn.bench import gpu

    monkeypatch.setattr(gpu, "run", lambda args: pytest.fail("the GPU benchmark was reached"))
    argv = ["bench", "--device", "cuda", "--isa", "default", "--threads", "1", "--ops"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--threads, --ops, --isa are options of the CPU benchmark only" in err, err


def test_device_cuda_without_cpu_only_options_reaches_the_gpu_benchmark(monkeypatch):
    from l2bn.bench import gpu

    seen = []
    monkeypatch.setattr(gpu, "run", lambda args: seen.append(args) or 0)
    assert main(["bench", "--device", "cuda", "--quick", "--rounds", "2", "--cases", "x"]) == 0
    assert len(seen) == 1 and seen[0].rounds == 2


def test_quick_says_its_timings_are_not_measurements(quick_results):
    note = "--quick: 2 rounds on tiny shapes, timings are not measurements"
    lines = format_table(quick_results).splitlines()
    assert lines[0].startswith(note)
    # above the table of timings and ratios, and above the ResNet-20 step's ratio
    header = next(i for i, line in enumerate(lines) if line.startswith("case "))
    assert lines[header - 1].startswith(note)
    step = next(i for i, line in enumerate(lines) if line.startswith("ResNet-20 (CIFAR-100"))
    assert lines[step - 1].startswith(note)
    # a full run's output is unchanged: no such line
    full = {**quick_results, "meta": {**quick_results["meta"], "quick": False}}
    assert "--quick" not in format_table(full)


def test_processor_line_counts_the_cpus_this_process_may_use(monkeypatch):
    """Under an affinity mask (taskset, a container's cpuset) the header said the machine's
    count alone, which overstates what the benchmark ran on."""
    import os

    from l2bn.bench import machine

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert machine.processor().endswith(", 8 logical CPUs, 2 usable by this process")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert machine.processor().endswith(", 8 logical CPUs")


def test_a_forced_aten_capability_gets_its_own_inductor_cache(monkeypatch):
    """torch 2.13's inductor cache does not tell kernels compiled under one ATen capability
    from another's: the compile row of ``--isa avx2`` reused AVX-512 kernels and computed
    garbage. The process started for another capability gets a cache of its own, unless
    the user chose one."""
    from l2bn.bench import machine

    monkeypatch.setattr(machine, "aten_capability", lambda: "avx512")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    env = machine.forced_environment(None, "avx2")
    assert env["ATEN_CPU_CAPABILITY"] == "avx2"
    assert env["TORCHINDUCTOR_CACHE_DIR"].endswith("aten-avx2")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/mine")
    assert machine.forced_environment(None, "avx2")["TORCHINDUCTOR_CACHE_DIR"] == "/tmp/mine"
