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

RESUME_HINT = (
    "The run keeps its last finished epoch: rerun the same command with --resume to "
    "continue it exactly."
)


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, None)
    add_run_arguments(parser)
    parser.add_argument("--seed", type=int, help="the seed to run (default: the first of seeds)")
    parser.add_argument(
        "--run-dir",
        help="run directory (default: RUNS_DIR/NAME/MODEL-NORM[-KEY=VALUE...][-PLACEMENT]/seedK)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue an unfinished run from its checkpoint"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved config as YAML and exit"
    )


OVERWRITE_RESUME_HINT = (
    "The run keeps its last finished epoch: rerun the same command with --resume and "
    "without --overwrite to continue it exactly (with --overwrite, it starts afresh)."
)


def run(args: argparse.Namespace) -> int:
    if list_presets_if_asked(args):
        return 0
    hint = OVERWRITE_RESUME_HINT if args.overwrite else RESUME_HINT
    return run_guarded("train", lambda: _run(args), resume_hint=hint)


def _chosen_seed(args: argparse.Namespace, seeds: list[int]) -> int:
    """``--seed``, else the one seed of ``--seeds``, else the config's first seed."""
    from l2bn.experiments.errors import UsageError

    if args.cfg_seeds is not None and args.seed is not None:
        raise UsageError("pass either --seed or --seeds, not both")
    if args.cfg_seeds is not None and len(seeds) > 1:
        listed = ",".join(map(str, seeds))
        raise UsageError(
            f"--seeds lists {len(seeds)} seeds ({listed}), but l2bn train runs one: pass "
            f"--seed {seeds[0]}, or use l2bn compare to train several seeds"
        )
    return args.seed if args.seed is not None else seeds[0]


def _run(args: argparse.Namespace) -> int:
    from l2bn.experiments.errors import UsageError
    from l2bn.experiments.preflight import (
        check_config,
        check_output_dir,
        check_sync_bn,
        check_tensorboard,
        check_world_size,
    )
    from l2bn.experiments.runs import run_dir
    from l2bn.experiments.train import train_run

    if args.resume and args.overwrite:
        raise UsageError(
            "pass either --resume (continue the unfinished run) or --overwrite (delete it "
            "and train afresh), not both"
        )
    config = resolve_config(args)
    seed = _chosen_seed(args, config.seeds)
    if args.seed is not None:
        try:
            config = config.replace(seeds=[seed])
        except ValueError as err:
            raise UsageError(f"--seed: {err}") from None
    check_config(config)
    if args.dry_run:
        sys.stdout.write(config.to_yaml())
        return 0
    check_world_size(config)
    if args.tensorboard:
        check_tensorboard()
    if args.sync_bn:
        check_sync_bn(config)
    directory = args.run_dir or run_dir(args.runs_dir, config, seed)
    check_output_dir(directory, "run directory")
    summary = train_run(
        config,
        seed,
        directory,
        resume=args.resume,
        overwrite=args.overwrite,
        quiet=args.quiet,
        tensorboard=args.tensorboard,
        sync_bn=args.sync_bn,
    )
    if not args.quiet and int(os.environ.get("RANK", "0")) == 0:
        line = (
            f"{directory}: best test accuracy {summary['best_test_acc']:.2f}% "
            f"at epoch {summary['best_epoch']}"
        )
        if "diverged_epoch" in summary:
            line += f"; diverged at epoch {summary['diverged_epoch']} ({summary['diverged']})"
        print(line, file=sys.stderr)
    return 0
