"""The ``l2bn`` command: one subcommand per module, each with ``configure`` and ``run``.

A subcommand module exposes ``configure(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int``. It imports heavy dependencies (matplotlib,
yaml, ...) inside ``run`` so that ``l2bn --help`` stays fast and torch-only.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "compare": ("l2bn.experiments.commands.compare", "train BN vs L2BN (or any norms) over seeds"),
    "train": ("l2bn.experiments.commands.train", "train one run from a preset"),
    "report": ("l2bn.experiments.commands.report", "tables, significance tests and plots"),
    "geometry": ("l2bn.analysis.geometry_command", "the toy geometry of Figures 2, 4 and 5"),
    "bench": ("l2bn.bench.command", "time L2BN against native BatchNorm"),
    "data": ("l2bn.data.command", "check or prepare the datasets"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="l2bn", description="L2BN: train, compare, analyse and benchmark."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if not module_name.startswith(err.name or "\0"):
                raise
            cmd.set_defaults(_missing=module_name)
            continue
        module.configure(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "_missing", None):
        raise NotImplementedError(f"l2bn {args.command}: {args._missing} is not implemented yet")
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
