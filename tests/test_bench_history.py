"""benchmarks/bench_history.py files each call by what ran before it: the README's account
of why the rounds of ``l2bn bench`` equalize histories rests on it."""

from __future__ import annotations

from _benchmark_scripts import load, run


def test_calls_are_filed_by_predecessor_and_marker_since_own_last_call():
    sequence = ["bn", "naive", "l2bn", "bn", "l2bn", "naive", "l2bn", "l2bn"]
    assert load("bench_history").filed(sequence, "naive") == [
        ("bn", None, False),
        ("naive", "bn", False),
        ("l2bn", "naive", True),
        ("bn", "l2bn", True),  # naive ran between the two bn calls
        ("l2bn", "bn", False),  # only bn since the previous l2bn
        ("naive", "l2bn", False),
        ("l2bn", "naive", True),
        ("l2bn", "l2bn", False),
    ]


def test_command_prints_a_median_per_history():
    out = run("bench_history", "--rounds", "12", "--shape", "4x8x3x3", "--threads", "1").stdout
    lines = out.splitlines()
    assert lines[0].startswith("2d 4x8x3x3 CL train_fwd_bwd, 1 thread(s), 12 random rounds")
    rows = [line.split() for line in lines[2:]]
    assert rows and {row[0] for row in rows} <= {"bn", "l2bn"}
    assert ["l2bn", "naive", "True"] in [row[:3] for row in rows]
    bad = run("bench_history", "--rounds", "0", check=False)
    assert bad.returncode == 2 and "--rounds" in bad.stderr


def test_contenders_leave_the_composite_out():
    args = ("--rounds", "6", "--shape", "4x8", "--threads", "1", "--contenders", "bn,l2bn")
    rows = [line.split() for line in run("bench_history", *args).stdout.splitlines()[2:]]
    assert rows and all("naive" not in row for row in rows)
    assert {row[0] for row in rows} == {"bn", "l2bn"}
    assert all(row[2] == "-" for row in rows)  # no marker: the composite is not there
    for args, message in (
        (("--contenders", "bn,gn"), "--contenders"),
        (("--contenders", "bn,bn"), "each name once"),
        (("--contenders", "bn,l2bn", "--marker", "naive"), "not among"),
    ):
        bad = run("bench_history", *args, check=False)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr


def test_plain_composite_is_the_composite_without_batchnorm_code():
    import torch
    from torch.profiler import profile

    from l2bn.bench.contenders import NaiveComposite

    plain = load("bench_history").PlainComposite()
    for shape, layout in (((6, 5, 3, 4), torch.channels_last), ((7, 9), torch.contiguous_format)):
        x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=layout)
        bn = torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d
        naive = NaiveComposite(bn(shape[1], dtype=torch.float64))
        torch.testing.assert_close(plain(x), naive(x))
        with profile() as prof:
            plain(x.float())
        names = {event.name for event in prof.events()}
        assert "aten::linalg_vector_norm" in names  # F.normalize ran
        assert not any("batch_norm" in name for name in names), names


def test_plain_contender_is_the_default_marker_without_the_composite():
    args = ("--rounds", "6", "--shape", "4x8", "--threads", "1")
    out = run("bench_history", *args, "--contenders", "bn,plain,l2bn").stdout.splitlines()
    assert "plain since own last" in out[1]
    rows = [line.split() for line in out[2:]]
    assert {row[0] for row in rows} == {"bn", "l2bn"}  # the marker's own rows left out
    assert ["l2bn", "plain", "True"] in [row[:3] for row in rows]


def test_plain_and_marker_only_lists_are_refused_where_they_mean_nothing():
    for args, message in (
        (("--contenders", "bn,plain,l2bn", "--mode", "eval_fwd"), "training modes only"),
        (("--contenders", "plain"), "besides the marker"),
        (("--contenders", "naive"), "besides the marker"),
    ):
        bad = run("bench_history", "--rounds", "1", *args, check=False)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
