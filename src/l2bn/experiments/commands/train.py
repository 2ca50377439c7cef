"""``l2bn train``: one run (one seed) of a preset; works under ``torchrun``."""

from __future__ import annotations

import argparse
import os
import sys

from l2bn.experiments.commands import (
    add_config_arguments,
    add_run_arguments,
    list_presets_if_asked,
    resolve_config,
    run_guarded,
)


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, None)
    add_run_arguments(parser)
    parser.add_argument("--seed", type=int, help="the seed to run (default: the first of seeds)")
    parser.add_argument("--run-dir", help="run directory (default: RUNS_DIR/NAME/MODEL-NORM/seedK)")
    parser.add_argument(
        "--resume", action="store_true", help="continue an unfinished run from its checkpoint"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved config as YAML and exit"
    )


def run(args: argparse.Namespace) -> int:
    if list_presets_if_asked(args):
        return 0
    return run_guarded("train", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from l2bn.experiments.runs import run_dir
    from l2bn.experiments.train import train_run

    config = resolve_config(args)
    seed = args.seed if args.seed is not None else config.seeds[0]
    if args.seed is not None:
        config = config.replace(seeds=[seed])
    if args.dry_run:
        sys.stdout.write(config.to_yaml())
        return 0
    directory = args.run_dir or run_dir(args.runs_dir, config, seed)
    summary = train_run(
        config,
        seed,
        directory,
        resume=args.resume,
        quiet=args.quiet,
        tensorboard=args.tensorboard,
        sync_bn=args.sync_bn,
    )
    if not args.quiet and int(os.environ.get("RANK", "0")) == 0:
        print(
            f"{directory}: best test accuracy {summary['best_test_acc']:.2f}% "
            f"at epoch {summary['best_epoch']}",
            file=sys.stderr,
        )
    return 0
