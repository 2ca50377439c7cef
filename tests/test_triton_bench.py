"""``l2bn bench --device cuda``: the clear error without CUDA, and the benchmark's own code
(cases, interleaved timing, rows, table, training steps) run on CPU with tiny inputs. The
GPU numbers themselves come from ``scripts/gpu-check.sh`` on a machine with a GPU."""

from __future__ import annotations

import json

import pytest
import torch

from l2bn.bench import gpu
from l2bn.bench.timing import round_orders
from l2bn.cli import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_fails_with_one_clear_line(capsys):
    assert main(["bench", "--device", "cuda", "--quick"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0], captured.err
    assert captured.out == ""


def test_issue_cases():
    names = [c.name for c in gpu.cases(quick=False)]
    assert len(names) == 6 * 2 * 2
    assert "256x256x56x56 f32" in names and "128x64x8x8 bf16 CL" in names
    assert [c.name for c in gpu.cases(quick=False, text="2048x7x7 bf16")] == [
        "256x2048x7x7 bf16",
        "256x2048x7x7 bf16 CL",
    ]


@pytest.mark.parametrize("names", ["abc", "abcd"])  # a fair period; seeded random rounds
def test_time_calls_run_the_rounds_of_the_cpu_benchmark(names):
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in names}
    samples = gpu.time_calls(calls, rounds=6, reps=2, device=torch.device("cpu"))
    assert {name: len(s) for name, s in samples.items()} == dict.fromkeys(names, 6)
    expected = [name for o in round_orders(list(names), 6) for name in o for _ in "12"]
    assert order == expected  # (rotating one order made each follow one other only)


@pytest.fixture(scope="module")
def cpu_results():
    """The benchmark's code on CPU: one small case in bf16 autocast and channels_last, every
    mode, the eager contenders, the compiled one over budget (skipped), ResNet-20 step."""
    results = gpu.run_benchmark(
        torch.device("cpu"),
        quick=True,
        rounds=1,
        case_text="16x32x14x14 bf16 CL",
        compile_budget=0.0,
        e2e_batch=2,
    )
    return json.loads(json.dumps(results))  # what --json writes


def test_rows_cover_every_mode_and_contender(cpu_results):
    rows = cpu_results["timings"]
    seen = {(r["mode"], r["contender"]) for r in rows}
    assert seen == {(m, c) for m in gpu.MODES for c in gpu.CONTENDERS}
    for row in rows:
        assert row["case"] == "16x32x14x14 bf16 CL"
        if row["contender"] == "l2bn_compiled":
            assert row["skipped"] is True
            continue
        assert 0 < row["min_us"] <= row["median_us"] <= row["max_us"]
        assert row["kernels"] is None  # counted by the profiler on CUDA only
        if row["contender"] == "cudnn_bn":
            assert row["ratio_to_cudnn_bn"] == pytest.approx(1.0)
        # Against the faster BatchNorm (the smaller denominator) the ratio is the larger one.
        worst = max(row["ratio_to_cudnn_bn"], row["ratio_to_native_bn"])
        assert row["ratio_to_best_bn"] == pytest.approx(worst)


def test_training_steps_and_table(cpu_results):
    (step,) = cpu_results["training_steps"]
    assert step["model"] == "resnet20" and step["batch"] == 2
    assert step["ratio"] == pytest.approx(step["l2bn_median_ms"] / step["bn_median_ms"])
    assert cpu_results["cuda_graph"]["capturable"] is None
    text = gpu.format_table(cpu_results)
    assert "16x32x14x14 bf16 CL" in text and "l2bn_compiled" in text and "skipped" in text
    assert "resnet20 SGD step" in text


def test_cases_past_the_time_budget_are_skipped_and_listed():
    results = gpu.run_benchmark(
        torch.device("cpu"), quick=True, rounds=1, cases_budget=0.0, e2e=False
    )
    assert results["timings"] == []
    assert results["meta"]["cases_skipped"] == [c.name for c in gpu.cases(quick=True)]
    assert "skipped (time budget)" in gpu.format_table(results)


def _one_small_case(mode: str) -> dict:
    """The benchmark on CPU: one small case, one mode, the compiled contender skipped."""
    return gpu.run_benchmark(
        torch.device("cpu"),
        quick=True,
        rounds=1,
        case_text="16x32x14x14 bf16 CL",
        modes=[mode],
        compile_budget=0.0,
        e2e=False,
    )


def test_a_contender_that_raises_gets_a_failed_row(monkeypatch):
    """A contender whose call raises (as a compile error did on the first GPU run, which
    aborted the whole benchmark) gets a row naming the error; the others are timed."""

    class Broken(gpu.L2BatchNorm2d):
        def forward(self, x):
            raise RuntimeError("kernel failed\nsecond line")

    monkeypatch.setattr(gpu, "L2BatchNorm2d", Broken)
    results = _one_small_case("train_fwd")
    rows = {row["contender"]: row for row in results["timings"]}
    assert rows["l2bn"] == {
        "case": "16x32x14x14 bf16 CL",
        "mode": "train_fwd",
        "contender": "l2bn",
        "error": "RuntimeError: kernel failed",
    }
    assert rows["cudnn_bn"]["median_us"] > 0 and rows["naive"]["median_us"] > 0
    assert gpu.failed_rows(results) == [rows["l2bn"]]
    assert "failed: RuntimeError: kernel failed" in gpu.format_table(results)


def test_every_contender_failing_leaves_only_failed_rows(monkeypatch):
    class Raising(torch.nn.Module):
        def forward(self, x):
            raise ValueError("no")

    def build(channels, device, layout, names):
        return {name: (Raising(), gpu._cudnn(True)) for name in names}

    monkeypatch.setattr(gpu, "build_contenders", build)
    results = _one_small_case("eval_fwd")
    rows = results["timings"]
    assert {r["contender"]: r.get("error", r.get("skipped")) for r in rows} == {
        "cudnn_bn": "ValueError: no",
        "native_bn": "ValueError: no",
        "naive": "ValueError: no",
        "l2bn": "ValueError: no",
        "l2bn_compiled": True,
    }


def test_a_training_step_that_raises_gets_a_failed_row(monkeypatch):
    def broken(name, batch, *args):
        raise RuntimeError("step failed")

    monkeypatch.setattr(gpu, "training_step_ratio", broken)
    results = gpu.run_benchmark(
        torch.device("cpu"), quick=True, rounds=1, cases_budget=0.0, e2e_batch=2
    )
    (step,) = results["training_steps"]
    assert step == {"model": "resnet20", "batch": 2, "error": "RuntimeError: step failed"}
    assert gpu.failed_rows(results) == [step]
    assert "resnet20 SGD step, batch 2: failed: RuntimeError: step failed" in (
        gpu.format_table(results)
    )


def test_quick_says_its_timings_are_not_measurements(cpu_results):
    quick = {**cpu_results, "meta": {**cpu_results["meta"], "quick": True}}
    lines = gpu.format_table(quick).splitlines()
    assert lines[0].startswith("--quick: ") and "timings are not measurements" in lines[0]
    header = next(i for i, line in enumerate(lines) if line.startswith("case "))
    assert lines[header - 1] == lines[0]
    full = {**cpu_results, "meta": {**cpu_results["meta"], "quick": False}}
    assert "--quick" not in gpu.format_table(full)
