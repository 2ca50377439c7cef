"""`l2bn geometry`: the table and the PNG figures."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from l2bn import cli
from l2bn.analysis import geometry_command

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    geometry_command.configure(parser)
    return parser.parse_args(list(argv))


def test_writes_the_three_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "figs"
    assert geometry_command.run(parse("--layers", "3", "--out", str(out))) == 0
    for name in ("figure2.png", "figure4.png", "figure5.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    text = capsys.readouterr().out
    rows = [line.split() for line in text.splitlines() if line[:5].strip().isdigit()]
    assert [r[0] for r in rows] == ["0", "1", "2", "3"]
    assert rows[1][1:] == ["35.81", "37.00"]  # BN and L2BN after layer 1 (Figs. 2, 4)


def test_cli_dispatch_and_custom_points(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["geometry", "--layers", "2", "--no-figures", "--out", str(tmp_path / "none")]
    argv += ["--points", "1,0;0,1;-1,-0.2"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "L2BN" in text and "Figure 5" in text
    assert not (tmp_path / "none").exists()
    rows = [line.split() for line in text.splitlines() if line[:5].strip().isdigit()]
    assert rows[0][1] == "90.00"  # the custom points were used


def test_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        parse("--points", "1,0;0")
    with pytest.raises(ValueError, match="--layers"):
        geometry_command.run(parse("--layers", "0", "--no-figures"))
