"""The library imports with torch alone; the command line is installed."""

from __future__ import annotations

import subprocess
import sys

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


def test_cli_help_does_not_import_torch():
    # `l2bn --help` must stay fast: neither the command line nor `import l2bn` loads torch
    code = (
        "import sys\n"
        "from l2bn.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'l2bn --help imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_lazy_public_names_are_the_library_objects():
    import l2bn
    from l2bn.layers import L2BatchNorm2d

    assert l2bn.L2BatchNorm2d is L2BatchNorm2d
    assert set(l2bn.__all__) <= set(dir(l2bn))
