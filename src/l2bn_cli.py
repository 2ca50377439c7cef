"""The ``l2bn`` command: one subcommand per module, each with ``configure`` and ``run``.

A subcommand module exposes ``configure(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int``. It imports heavy dependencies (matplotlib,
yaml, ...) inside ``run`` so that ``l2bn <command> --help`` stays fast.

This module is the console entry point and lives outside the ``l2bn`` package on purpose:
importing any ``l2bn.*`` module runs ``l2bn/__init__.py`` first, and that imports torch and
registers the package's operators (so that ``import l2bn`` is enough for
``torch.export.load`` and ``torch.ops.l2bn.*``). Here nothing of ``l2bn`` (nor torch) is
imported until a subcommand is chosen, so ``l2bn --help`` does not import torch.
``l2bn.cli`` re-exports it (``python -m l2bn.cli`` works too, with torch imported).
"""

from __future__ import annotations

import argparse
import importlib
import os
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


def _chosen_command(argv: Sequence[str]) -> str | None:
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (one broken command breaks no other)."""
    parser = argparse.ArgumentParser(
        prog="l2bn", description="L2BN: train, compare, analyse and benchmark."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(_parser=cmd)
        if name == command:
            try:
                module = importlib.import_module(module_name)
            except RuntimeError as exc:
                # The fused kernels refused to load (L2BN_CPU_ISA names an instruction set
                # they lack): their message, without the import's traceback.
                if not str(exc).startswith("l2bn._C:"):
                    raise
                parser.exit(2, f"l2bn: error: {exc}\n")
            module.configure(cmd)
            cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; a closed standard output (``l2bn ... | head``) ends it quietly."""
    try:
        try:
            return _main(argv)  # argparse's --help and errors leave by SystemExit
        finally:
            sys.stdout.flush()  # here, not at exit: a closed pipe shows up inside the try
    except BrokenPipeError:
        # The reader went away. As the signal module's "Note on SIGPIPE" does: point stdout
        # at devnull, so that flushing it at exit raises nothing, and exit with 1.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_chosen_command(argv))
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # parse_args would report them from the top-level parser ("l2bn: error: ..." under
        # "usage: l2bn [-h] COMMAND ..."): name the command and show its usage instead.
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
