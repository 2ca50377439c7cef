"""Command modules ``l2bn train | compare | report`` and their shared options."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

# Flags that set one config field each: (flag, field, help).
_SHORTCUTS = (
    ("--epochs", "epochs", "number of epochs"),
    ("--model", "model", "model name (l2bn.models)"),
    ("--norm", "norm", "normalization name (l2bn.norms)"),
    ("--seeds", "seeds", "comma-separated seeds, e.g. 121,122,123"),
    ("--batch-size", "batch_size", "training batch size (total over all processes)"),
    ("--lr", "lr", "peak learning rate"),
    ("--dataset", "dataset", "dataset name (l2bn.data)"),
    ("--data-root", "data_root", "dataset folder"),
    ("--train-subset", "train_subset", "train on a fixed subset of this many samples"),
    ("--test-subset", "test_subset", "evaluate on a fixed subset of this many samples"),
    ("--device", "device", "auto, cpu, cuda or cuda:N"),
    ("--threads", "threads", "torch CPU threads per process"),
    ("--name", "name", "experiment name (first level of the runs directory)"),
)


def add_config_arguments(
    parser: argparse.ArgumentParser, default_preset: str | None, hidden: tuple[str, ...] = ()
) -> None:
    """--preset, --config, --set and the shortcut flags; later sources override earlier ones.

    The shortcuts of the fields in ``hidden`` are still parsed (for the command to refuse
    them with a pointer to its own option) but left out of ``--help``."""
    from l2bn.experiments.presets import DEFAULT_PRESET

    preset_default = default_preset or DEFAULT_PRESET
    group = parser.add_argument_group("configuration (preset < --config < flags < --set)")
    group.add_argument(
        "--preset",
        default=None,  # None: not given (a --config file's `preset:` may then name it)
        help=f"named preset (default {preset_default}); `--preset list` lists them",
    )
    parser.set_defaults(default_preset=preset_default)
    group.add_argument("--config", metavar="FILE", help="YAML file overriding the preset")
    group.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config field (repeatable), e.g. --set weight_decay=1e-4",
    )
    for flag, key, text in _SHORTCUTS:
        shown = argparse.SUPPRESS if key in hidden else text
        group.add_argument(flag, dest=f"cfg_{key}", default=None, metavar=key.upper(), help=shown)
    group.add_argument(
        "--no-metrics", action="store_true", help="skip the intra/inter angles and IIR"
    )


def resolve_config(args: argparse.Namespace) -> Any:
    """The config from preset, file, shortcut flags and --set, in that order.

    Any fault in them (unknown preset or key, a value of the wrong type, a config file that
    is missing or not valid YAML) is a UsageError.
    """
    from l2bn.experiments.config import apply_assignments, coerce
    from l2bn.experiments.errors import UsageError
    from l2bn.experiments.presets import load_config_file, load_preset

    try:
        config = load_preset(args.default_preset if args.preset is None else args.preset)
        if args.config:
            config = load_config_file(args.config, base=config, preset=args.preset)
        changes = {}
        for flag, key, _ in _SHORTCUTS:
            value = getattr(args, f"cfg_{key}", None)
            if value is not None:
                try:
                    changes[key] = coerce(key, value)
                except ValueError as err:
                    raise ValueError(f"{flag}: {err}") from None
        if getattr(args, "no_metrics", False):
            changes["metrics"] = False
        if changes:
            config = config.replace(**changes)
        return apply_assignments(config, args.assignments)
    except (ValueError, OSError) as err:
        raise UsageError(str(err)) from None


def list_presets_if_asked(args: argparse.Namespace) -> bool:
    if args.preset != "list":
        return False
    from l2bn.experiments.presets import list_presets

    print("\n".join(list_presets()))
    return True


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", default="runs", help="root of the run directories")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    parser.add_argument(
        "--tensorboard", action="store_true", help="also write TensorBoard logs (needs tensorboard)"
    )
    parser.add_argument(
        "--sync-bn",
        action="store_true",
        help="under torchrun: synchronize BN/L2BN statistics across processes",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete what the run directories hold (a finished or unfinished run, or a run "
        "of another configuration) and train afresh (without it a finished run is kept, an "
        "unfinished one resumed, and one of another configuration is an error)",
    )


def run_guarded(command: str, body: Callable[[], int], resume_hint: str = "") -> int:
    """Run ``body``; user-facing errors become one line on stderr and an exit code.

    Exit codes: 2 for a UsageError (bad input or environment, found before any work), 1 for
    an error while working (data, run directory, checkpoint, disk), 130 for Ctrl-C, which
    prints ``resume_hint``. ``L2BN_DEBUG=1`` lets the exception through, with its traceback.
    """
    from l2bn.data.registry import DatasetOptionError
    from l2bn.experiments.checkpoint import CheckpointError
    from l2bn.experiments.errors import RunExistsError, UsageError
    from l2bn.experiments.run_lock import RunLockedError

    debug = os.environ.get("L2BN_DEBUG", "") not in ("", "0")
    working_errors = (
        FileNotFoundError,
        ValueError,
        ImportError,
        OSError,
        CheckpointError,
        RunExistsError,
        RunLockedError,
    )
    try:
        with one_line_warnings(command):
            return body()
    except (UsageError, DatasetOptionError) as err:
        if debug:
            raise
        print(f"l2bn {command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed (`| head`): the l2bn entry point ends quietly
        raise
    except working_errors as err:
        if debug:
            raise
        print(f"l2bn {command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\nl2bn {command}: interrupted. {resume_hint}".rstrip(), file=sys.stderr)
        return 130


@contextlib.contextmanager
def one_line_warnings(command: str) -> Iterator[None]:
    """Show warnings (e.g. a checkpoint fallback) as ``l2bn <command>: warning: ...``,
    without Python's file, line and source excerpt."""
    original = warnings.formatwarning

    def one_line(message: Warning | str, *args: Any, **kwargs: Any) -> str:
        return f"l2bn {command}: warning: {message}\n"

    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = original
