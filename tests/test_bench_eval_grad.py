"""benchmarks/bench_eval_grad.py: eval-mode forward+backward of BatchNorm and L2BN, frozen
and trainable (the README's figures for fine-tuning with frozen norms rest on it)."""

from __future__ import annotations

import torch

from _benchmark_scripts import load, run


def test_layers_are_in_eval_mode_and_frozen_where_asked():
    import l2bn

    modules = load("bench_eval_grad").layers((4, 3, 5, 5))
    assert set(modules) == {"frozen_bn", "frozen_l2bn", "eval_bn", "eval_l2bn"}
    assert not any(m.training for m in modules.values())
    assert isinstance(modules["frozen_l2bn"], l2bn.FrozenL2BatchNorm)
    assert not any(p.requires_grad for p in modules["frozen_bn"].parameters())
    assert all(p.requires_grad for p in modules["eval_l2bn"].parameters())
    assert not torch.equal(modules["eval_bn"].running_var, torch.ones(3))


def test_command_prints_both_kinds_of_every_case():
    out = run("bench_eval_grad", "--rounds", "1", "--shape", "4x3x5x5", "--shape", "6x4").stdout
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [(r[1], r[-4]) for r in rows] == [
        ("4x3x5x5", "frozen"),
        ("4x3x5x5", "eval"),
        ("4x3x5x5", "frozen"),
        ("4x3x5x5", "eval"),
        ("6x4", "frozen"),
        ("6x4", "eval"),
    ]
    for r in rows:
        bn, l2, ratio = float(r[-3]), float(r[-2]), float(r[-1])
        assert bn > 0 and l2 > 0 and abs(ratio - l2 / bn) <= 0.05 * ratio  # ms rounded


def test_bad_arguments_are_usage_errors():
    result = run("bench_eval_grad", "--rounds", "0", check=False)
    assert result.returncode == 2 and ">= 1" in result.stderr
    result = run("bench_eval_grad", "--shape", "1x3", check=False)
    assert result.returncode == 2 and "N >= 2" in result.stderr
