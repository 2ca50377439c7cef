"""The library imports with torch alone; the command line is installed."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

HEAVY = ("matplotlib", "yaml", "scipy", "tqdm", "PIL", "soundfile", "tensorboard")


def test_library_imports_without_experiment_dependencies():
    # Measured against what `import torch` itself loads (torch.hub pulls in tqdm when present).
    code = (
        "import sys, torch\n"
        "before = set(sys.modules)\n"
        "import l2bn, l2bn.functional, l2bn.layers, l2bn.convert\n"
        "import l2bn.analysis, l2bn.models, l2bn.norms, l2bn.sync\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules and m not in before]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_api_names():
    import l2bn

    for name in (
        "L2BatchNorm1d",
        "L2BatchNorm2d",
        "L2BatchNorm3d",
        "l2_batch_norm",
        "convert_bn_to_l2bn",
        "convert_l2bn_to_bn",
    ):
        assert callable(getattr(l2bn, name)), name


def test_cli_help_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "l2bn.cli", "--help"], check=True, capture_output=True, text=True
    ).stdout
    for command in ("compare", "train", "report", "geometry", "bench", "data"):
        assert command in out


def test_an_unknown_option_of_a_command_names_the_command_with_its_usage(capsys):
    # argparse reports it from the top-level parser: "usage: l2bn [-h] COMMAND ..." and
    # "l2bn: error: ...", which neither names the command nor lists its options.
    from l2bn.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["geometry", "--no-figures", "--bogus", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: l2bn geometry ")
    assert err.splitlines()[-1] == "l2bn geometry: error: unrecognized arguments: --bogus 1"


def _console_entry_point() -> tuple[str, str]:
    """``(module, function)`` of the ``l2bn`` command, as pyproject.toml declares it."""
    tomllib = pytest.importorskip("tomllib")
    with open(ROOT / "pyproject.toml", "rb") as f:
        target = tomllib.load(f)["project"]["scripts"]["l2bn"]
    module, _, function = target.partition(":")
    return module, function


def test_cli_help_does_not_import_torch():
    # `l2bn --help` must stay fast: the command's module imports neither torch nor l2bn
    # (importing any l2bn.* module runs l2bn/__init__.py, which imports torch)
    module, function = _console_entry_point()
    code = (
        "import sys\n"
        f"from {module} import {function} as main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'l2bn --help imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_cli_module_in_the_package_is_the_command():
    from l2bn.cli import main

    module, function = _console_entry_point()
    assert main is getattr(importlib.import_module(module), function)


def _run_fresh(code: str, **env: str) -> None:
    """``code`` in a new Python process (this one has every module of l2bn loaded)."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]


def test_import_registers_the_cpu_operators_with_fakes_and_autograd():
    import l2bn

    if not l2bn.backends.available("cpu"):
        pytest.skip(l2bn.backends.unavailable_reason("cpu"))
    # nothing but `import l2bn`: no layer call, no l2bn.backends
    code = (
        "import torch, l2bn\n"
        "from torch._subclasses.fake_tensor import FakeTensorMode\n"
        "ops = torch.ops.l2bn\n"
        "assert ops.cpu_isa() in ops.cpu_isas()\n"
        "x = torch.randn(2, 3, 4, requires_grad=True)\n"
        "rm, rv = torch.zeros(3), torch.ones(3)\n"
        "ops.eval_forward(x, rm, rv, None, None, 1e-5, 1e-12, True).sum().backward()\n"
        "assert x.grad is not None and x.grad.shape == x.shape  # autograd formula\n"
        "with FakeTensorMode() as mode:\n"
        "    xf = mode.from_tensor(torch.randn(2, 3, 4))\n"
        "    s = mode.from_tensor(torch.ones(3))\n"
        "    y = ops.eval_forward(xf, s, s, None, None, 1e-5, 1e-12, True)\n"
        "    assert y.shape == (2, 3, 4)  # fake implementation\n"
    )
    _run_fresh(code)


def test_exported_program_loads_after_import_l2bn(tmp_path):
    import torch

    import l2bn

    if not l2bn.backends.available("cpu"):
        pytest.skip(l2bn.backends.unavailable_reason("cpu"))
    layer = l2bn.L2BatchNorm2d(4).eval()
    x = torch.randn(2, 4, 3, 3)
    path = tmp_path / "l2bn.pt2"
    program = torch.export.export(layer, (x,))
    assert "l2bn.eval_forward" in str(program.graph)
    torch.export.save(program, path)
    torch.save((x, layer(x)), tmp_path / "io.pt")
    code = (
        "import torch, l2bn\n"
        f"program = torch.export.load({str(path)!r})\n"
        f"x, y = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "torch.testing.assert_close(program.module()(x), y)\n"
    )
    _run_fresh(code)


def test_import_registers_the_triton_operators_where_the_backend_loads():
    pytest.importorskip("triton")
    # TRITON_INTERPRET=1: the Triton backend is usable without a GPU
    code = (
        "import torch, l2bn\n"
        "assert l2bn._dispatch.triton_backend.UNAVAILABLE_REASON is None\n"
        "for name in ('train_forward', 'train_backward', 'eval_forward', 'row_moments'):\n"
        "    assert hasattr(torch.ops.l2bn_triton, name), name\n"
    )
    _run_fresh(code, TRITON_INTERPRET="1", L2BN_DISABLE_TRITON="0")


def test_lazy_public_names_are_the_library_objects():
    import l2bn
    from l2bn.layers import L2BatchNorm2d

    assert l2bn.L2BatchNorm2d is L2BatchNorm2d
    assert set(l2bn.__all__) <= set(dir(l2bn))


@pytest.mark.parametrize(
    "argv",
    [
        ["compare", "--preset", "list"],
        ["data"],
        # through run_guarded, which reports other OSErrors as `l2bn compare: error: ...`
        ["compare", "--dry-run", "--runs-dir", "{tmp}"],
    ],
    ids=" ".join,
)
def test_a_closed_stdout_ends_the_command_quietly(argv, tmp_path):
    # `l2bn ... | head -3`: the reader closes the pipe before the command has written all.
    # (argparse's --help ignores a failed write itself: it exits 0, quietly too.)
    argv = [arg.format(tmp=tmp_path / "runs") for arg in argv]
    module, function = _console_entry_point()
    code = f"import sys\nfrom {module} import {function} as main\nsys.exit(main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # before the command writes anything: every write fails (EPIPE)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait() == 1 and err == "", err
