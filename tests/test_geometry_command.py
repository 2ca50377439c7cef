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


BAD_ARGUMENTS = {
    "no layers": (["--layers", "0"], "--layers must be >= 1, got 0"),
    "negative layers": (["--layers", "-1"], "--layers must be >= 1, got -1"),
    "one point": (["--points", "1,0;0"], "give at least two 2-D points"),
    "not numbers": (["--points", "a,b;1,1"], "--points must look like 'x,y;x,y;...'"),
    "zero point": (["--points", "0,0;0,0;1,1"], "the point (0, 0) has no direction"),
    "NaN point": (["--points", "nan,1;1,0;0,1"], "the coordinates must be finite, got (nan"),
    "infinite point": (["--points", "1,inf;1,0"], "the coordinates must be finite"),
    # (2, 2) is the mean of the three: BN maps it to zero
    "zero after BN": (["--points", "1,1;2,2;3,3"], "becomes the zero vector after a norm"),
    "overflow": (["--points", "1e300,1;1,0;0,1"], "the angles are not finite"),
    "out is a file": (["--out", "{file}"], "a file of that name exists"),
    "out under a file": (["--out", "{file}/sub"], "cannot write the figures there"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_bad_arguments_are_one_line_exit_2(
    case: str, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("not a folder")
    argv, expected = BAD_ARGUMENTS[case]
    argv = ["geometry", *(a.format(file=tmp_path / "file") for a in argv)]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("l2bn geometry: error: ") and expected in captured.err
    assert len(captured.err.splitlines()) == 1, captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_unwritable_out_is_found_before_drawing(
    tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder that cannot be written (also for root, who passes permission checks: here
    a probe file that the system refuses) is a usage error, before the table."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert cli.main(["geometry", "--out", str(tmp_path / "figs")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "--out " in captured.err and "(Operation not permitted)" in captured.err


def test_geometry_and_the_experiments_check_folders_with_one_write_probe(
    tmp_path: Path, monkeypatch
) -> None:
    """``l2bn geometry --out`` and the experiments' folder check (``compare``, ``report``)
    write the same probe file, from ``l2bn._files``: one definition for both. Each keeps
    its own behaviour: geometry keeps the folder it made for its figures, the experiments'
    check leaves nothing behind."""
    import tempfile

    from l2bn._files import PROBE_PREFIX
    from l2bn.experiments.preflight import check_output_dir

    prefixes = []
    real = tempfile.mkstemp

    def spy(*args, **kwargs):
        prefixes.append(kwargs.get("prefix"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", spy)
    geometry_command._check_out(tmp_path / "figs")
    check_output_dir(tmp_path / "runs" / "demo", "runs folder")
    assert prefixes == [PROBE_PREFIX, PROBE_PREFIX]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["figs"]


def test_l2bn_debug_shows_the_exception(monkeypatch) -> None:
    monkeypatch.setenv("L2BN_DEBUG", "1")
    with pytest.raises(ValueError, match="--layers"):
        geometry_command.run(parse("--layers", "0", "--no-figures"))


def test_the_default_output_folder_is_ignored_by_git() -> None:
    # like runs/ (where the reports go by default): the figures are outputs, not sources
    gitignore = Path(__file__).resolve().parents[1] / ".gitignore"
    if not gitignore.is_file():
        pytest.skip("no .gitignore (not a checkout)")
    default = parse().out
    assert f"/{default}/" in gitignore.read_text().splitlines()
