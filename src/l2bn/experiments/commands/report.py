"""``l2bn report RUNS_DIR``: the Table 1 layout, paired t-tests and curves from saved runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from l2bn.experiments.commands import run_guarded


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs_dir", metavar="RUNS_DIR", help="folder holding run directories")
    parser.add_argument("--out", help="report folder (default RUNS_DIR/report)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")


def run(args: argparse.Namespace) -> int:
    return run_guarded("report", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from l2bn.experiments.errors import UsageError
    from l2bn.experiments.preflight import check_output_dir
    from l2bn.experiments.report import refuse_report, write_report
    from l2bn.experiments.runs import scan_runs

    runs_dir = Path(args.runs_dir).expanduser()
    if not runs_dir.is_dir():  # a bad argument (exit code 2), before anything is created
        state = "is not a directory" if runs_dir.exists() else "does not exist"
        raise UsageError(f"runs directory {runs_dir} {state}")
    out = Path(args.out) if args.out else runs_dir / "report"
    check_output_dir(out, "report folder")  # before reading any run
    scan = scan_runs(runs_dir)
    if not scan.records:
        why = "; ".join(f"{d}: {reason}" for d, reason in scan.ignored)
        raise refuse_report(
            out,
            ValueError(
                f"no runs with metrics found under {args.runs_dir}" + (f" ({why})" if why else "")
            ),
        )
    result = write_report(scan.records, out, plots=not args.no_plots, ignored=scan.ignored)
    print(result["text"], end="")
    print(f"\nReport files: {', '.join(str(p) for p in result['files'])}")
    if result["plots"]:
        print(f"Plots: {', '.join(str(p) for p in result['plots'])}")
    return 0
