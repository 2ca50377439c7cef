"""``l2bn compare``: train several norms (or L2BN placements) over seeds, then report.

With no arguments this is the project's main job: preset ``fmnist-resnet20`` (ResNet-20 on
Fashion-MNIST, BN vs L2BN, 3 seeds, sized to finish within 10 minutes on a 2-core CPU).
Tables 3 and 5 of the paper are ``--norms``, Table 4 is ``--placements``. Finished runs are
not repeated; unfinished ones resume from their checkpoint. On a CPU the runs go to parallel
worker processes (``--jobs``), each with its share of the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from l2bn.experiments.commands import (
    add_config_arguments,
    add_run_arguments,
    list_presets_if_asked,
    one_line_warnings,
    resolve_config,
    run_guarded,
)


def configure(parser: argparse.ArgumentParser) -> None:
    from l2bn.experiments.presets import DEFAULT_PRESET

    add_config_arguments(parser, DEFAULT_PRESET, hidden=("norm",))  # --norms instead
    add_run_arguments(parser)
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--norms",
        default="bn,l2bn",
        help="comma-separated norms to compare (default bn,l2bn; Table 3: bn,lnbn,inbn,pnbn,l2bn;"
        " Table 5: bn,ln,in,gn-cpg4,gn-cpg8,sn,bcn,bin,l2bn)",
    )
    what.add_argument(
        "--placements",
        help="comma-separated L2BN placements (Table 4): none,classifier,stage1,stage2-3,all",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="parallel worker processes (default 0 = auto: on a CPU one per run, at most one "
        "per core; 1 on a GPU); a CPU run that does not set --threads gets the cores divided "
        "by this when it starts, and keeps that count when resumed",
    )
    parser.add_argument("--out", help="report folder (default RUNS_DIR/NAME/report)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved config and the planned runs"
    )


RESUME_HINT = (
    "Finished runs are kept and unfinished ones keep their last finished epoch: rerun the "
    "same command to continue them exactly."
)
OVERWRITE_RESUME_HINT = (
    "Finished runs are kept and unfinished ones keep their last finished epoch: rerun the "
    "same command without --overwrite to continue them exactly (with it, they start afresh)."
)


def run(args: argparse.Namespace) -> int:
    if list_presets_if_asked(args):
        return 0
    hint = OVERWRITE_RESUME_HINT if args.overwrite else RESUME_HINT
    return run_guarded("compare", lambda: _run(args), resume_hint=hint)


def plan_variants(config: Any, norms: str, placements: str | None) -> list[Any]:
    """One config per compared variant; placement ``none`` is the BN model, ``all`` is L2BN."""
    variants = []
    if placements:
        for where in _split(placements):
            if where == "none":
                variants.append(config.replace(norm="bn", l2bn_layers="all"))
            else:
                variants.append(config.replace(norm="l2bn", l2bn_layers=where))
    else:
        variants = [config.replace(norm=norm, l2bn_layers="all") for norm in _split(norms)]
    _refuse_one_variant_twice(variants)
    return variants


def _refuse_one_variant_twice(variants: list[Any]) -> None:
    """ValueError when two entries are one variant (``gn-cpg4``, and ``gn`` with
    ``norm_kwargs.channels_per_group=4``): their runs would be one run trained twice, and
    the report would refuse them as one run in two directories."""
    from l2bn.experiments.summary import norm_label, variant_key

    seen: dict[tuple[str, ...], Any] = {}
    for variant in variants:
        first = seen.setdefault(variant_key(variant), variant)
        if first is not variant:
            label = norm_label(variant.norm, variant.l2bn_layers, variant.norm_kwargs)
            raise ValueError(
                f"{first.norm!r} and {variant.norm!r} build one layer ({label}) with "
                f"norm_kwargs {dict(variant.norm_kwargs)}: list it once"
            )


def _split(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"expected a comma-separated list, got {text!r}")
    seen: set[str] = set()
    for item in items:
        if item.lower() in seen:
            raise ValueError(f"{item!r} listed twice in {text!r}")
        seen.add(item.lower())
    return items


def _auto_jobs(config: Any, runs: int) -> int:
    """``--jobs 0``: one process per run up to one per core on a CPU, else 1. ``runs``
    counts every run of the command, finished or not, so that a rerun that continues some
    of them plans the same jobs (and threads per run) as the first one."""
    from l2bn.experiments.distributed import resolve_device

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 1
    if resolve_device(config.device).type != "cpu":
        return 1
    return max(1, min(runs, os.cpu_count() or 1))


def _default_threads(jobs: int) -> int:
    """Threads of a CPU run that does not set them: this process's torch threads for one
    run at a time, else the cores shared among the ``jobs`` worker processes."""
    if jobs == 1:
        import torch

        return torch.get_num_threads()
    return max(1, (os.cpu_count() or 1) // jobs)


_worker_interrupted = False


def _worker(config_dict: dict, seed: int, directory: str, options: dict) -> dict:
    """Entry point of a spawned worker process: one run. Ctrl-C (SIGINT) stops it at once,
    like the parent, and is reported back as ``{"interrupted": True}``, not as a traceback;
    after that the worker starts no other run. Between runs it ignores SIGINT (see
    ``_ignore_sigint``)."""
    global _worker_interrupted
    from l2bn.experiments.config import ExperimentConfig
    from l2bn.experiments.train import train_run

    if _worker_interrupted:
        return {"interrupted": True}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with one_line_warnings("compare"):
            return train_run(ExperimentConfig.from_dict(config_dict), seed, directory, **options)
    except KeyboardInterrupt:
        _worker_interrupted = True
        return {"interrupted": True}
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ignore_sigint() -> None:
    """Worker initializer: an idle worker ignores Ctrl-C (the parent handles it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _plan(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """The config and its variants, every name, value and device checked (UsageError)."""
    from l2bn.experiments.errors import UsageError
    from l2bn.experiments.preflight import check_config

    _refuse_variant_options(args)
    if args.jobs < 0:
        raise UsageError(f"--jobs: expected 0 (auto) or a positive count, got {args.jobs}")
    if args.jobs > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # each worker would join the job's process group: ranks of different runs would pair
        raise UsageError(
            f"--jobs {args.jobs}: under torchrun the processes of the job train one run at a "
            "time together; pass --jobs 1 (or leave it out)"
        )
    config = resolve_config(args)
    try:
        variants = plan_variants(config, args.norms, args.placements)
    except ValueError as err:
        raise UsageError(f"--{'placements' if args.placements else 'norms'}: {err}") from None
    for variant in variants:
        check_config(variant)
    return config, variants


def _refuse_variant_options(args: argparse.Namespace) -> None:
    """``--norm`` and ``--set norm=/l2bn_layers=`` would be overridden by ``--norms`` or
    ``--placements``: a UsageError (after the name check, so an unknown name says so)."""
    from l2bn.experiments.errors import UsageError
    from l2bn.experiments.preflight import check_norm_name

    given = []
    if args.cfg_norm is not None:
        check_norm_name(args.cfg_norm)
        given.append("--norm")
    for assignment in args.assignments:
        key, _, value = assignment.partition("=")
        if key.strip() == "norm":
            check_norm_name(value.strip())
        if key.strip() in ("norm", "l2bn_layers"):
            given.append(f"--set {key.strip()}")
    if given:
        raise UsageError(
            f"{given[0]}: compare trains one variant per entry of --norms (e.g. --norms "
            "bn,lnbn) or --placements, so it takes no single norm or placement"
        )


def _planned_yaml(config: Any, args: argparse.Namespace) -> str:
    """The resolved config as compare runs it: the single ``norm`` (which no variant takes
    from it) replaced by the ``norms`` list, or ``norm`` and ``l2bn_layers`` by the
    ``placements`` list (``none`` is the BN model, the others L2BN placed there)."""
    from l2bn.experiments import yaml_text

    shown: dict[str, Any] = {}
    for key, value in config.to_dict().items():
        if key == "norm":
            if args.placements:
                shown["placements"] = _split(args.placements)
            else:
                shown["norms"] = _split(args.norms)
        elif not (key == "l2bn_layers" and args.placements):
            shown[key] = value
    return yaml_text.dump(shown, sort_keys=False, default_flow_style=None)


def _require_comparable_with_saved(args: argparse.Namespace, runs: list[Any]) -> None:
    """The runs already saved under RUNS_DIR/NAME (other than those planned) share this
    config's settings, the norm and seed apart; else `l2bn report` would pool them."""
    from l2bn.experiments.identity import require_comparable
    from l2bn.experiments.runs import find_runs

    folder = Path(args.runs_dir) / runs[0][0].name
    if not folder.is_dir():
        return
    planned = {Path(d).resolve() for _, _, d in runs}
    saved = [r for r in find_runs(folder) if r.directory.resolve() not in planned]
    if not saved:
        return
    require_comparable(
        [(r.config, r.seed) for r in saved] + [(v, seed) for v, seed, _ in runs],
        f"{folder} already holds runs of another configuration and `l2bn report` would "
        "compare them with these: choose another --name (or --runs-dir), or rerun with "
        "the saved runs' settings",
    )


def _run(args: argparse.Namespace) -> int:
    from l2bn.experiments.distributed import env_world_size
    from l2bn.experiments.identity import (
        inspect_run,
        mismatch_error,
        run_identity,
        settle_threads,
    )
    from l2bn.experiments.preflight import (
        check_output_dir,
        check_sync_bn,
        check_tensorboard,
        check_world_size,
    )
    from l2bn.experiments.runs import inspect_run_dir, run_dir

    started = time.time()
    config, variants = _plan(args)
    planned = [(v, seed) for v in variants for seed in config.seeds]
    jobs = args.jobs if args.jobs > 0 else _auto_jobs(config, len(planned))
    threads = _default_threads(jobs)
    job = {"world_size": env_world_size(), "sync_bn": args.sync_bn}  # the norm batch
    runs = []
    for variant, seed in planned:
        directory = run_dir(args.runs_dir, variant, seed)
        variant = settle_threads(variant, directory, threads, adopt=not args.overwrite)
        runs.append((variant, seed, directory))
    states = [inspect_run(d, run_identity(v, seed, **job)) for v, seed, d in runs]
    if args.dry_run:
        sys.stdout.write(_planned_yaml(config, args))
        for (variant, _, directory), state in zip(runs, states, strict=True):
            notes = []
            if state.holds_run and args.overwrite:
                notes.append("to be deleted and trained afresh: --overwrite")
            elif state.holds_run and not state.same:
                notes.append("holds another configuration")
            elif state.done:
                notes.append("done")
            if variant.threads is not None:
                notes.append(f"threads {variant.threads}")
            print(f"# run: {directory}" + (f" ({'; '.join(notes)})" if notes else ""))
        return 0
    _require_comparable_with_saved(args, runs)
    check_world_size(config)
    if args.tensorboard:
        check_tensorboard()
    if args.sync_bn:
        for variant in variants:
            check_sync_bn(variant)
    check_output_dir(args.runs_dir, "runs folder")
    if args.out:
        check_output_dir(args.out, "report folder")
    conflicts = [(d, st) for (_, _, d), st in zip(runs, states, strict=True) if not st.same]
    conflicts = [(d, st) for d, st in conflicts if st.holds_run]
    if conflicts and not args.overwrite:
        directory, state = conflicts[0]
        error = mismatch_error(directory, state)
        if len(conflicts) > 1:
            error.args = (f"{error} [{len(conflicts) - 1} more run(s) differ]",)
        raise error
    finished = [st.same and st.done and not args.overwrite for st in states]
    pending = [run for run, done in zip(runs, finished, strict=True) if not done]
    skipped = len(runs) - len(pending)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    say(
        f"l2bn compare: preset {config.name}, {len(variants)} variant(s) x "
        f"{len(config.seeds)} seed(s) = {len(runs)} run(s); {skipped} already finished"
    )
    out = Path(args.out) if args.out else Path(args.runs_dir) / config.name / "report"
    if pending:
        _check_data(config)
        from l2bn.experiments.report import clear_report

        # the runs are about to change: an interrupted compare must not leave the old
        # report there as if it described them
        if int(os.environ.get("RANK", "0")) == 0:
            clear_report(out)
        options = {
            "resume": True,
            "overwrite": args.overwrite,
            "quiet": args.quiet,
            "tensorboard": args.tensorboard,
            "sync_bn": args.sync_bn,
        }
        if min(jobs, len(pending)) == 1:
            _run_sequential(pending, options)
        else:
            _run_parallel(pending, options, min(jobs, len(pending)), say)
    found = [(Path(d), *inspect_run_dir(d)) for _, _, d in runs]
    records = [record for _, record, _ in found if record is not None]
    ignored = [(d, why) for d, record, why in found if record is None and d.exists()]
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    from l2bn.experiments.report import write_report

    result = write_report(records, out, plots=not args.no_plots, ignored=ignored, order=variants)
    print(result["text"], end="")
    print(f"\nReport files: {', '.join(str(p) for p in result['files'])}")
    if result["plots"]:
        print(f"Plots: {', '.join(str(p) for p in result['plots'])}")
    print(f"Wall time: {time.time() - started:.1f} s")
    return 0


def _check_data(config: Any) -> None:
    """Fail early, with the data loader's own message, when the dataset is missing, and
    with a UsageError when a subset is larger than its split."""
    from l2bn.data import load_dataset
    from l2bn.experiments.train import check_subsets

    splits = [
        load_dataset(config.dataset, root=config.data_root, train=train, **config.dataset_kwargs)
        for train in (True, False)
    ]
    check_subsets(config, *splits)


def _run_sequential(pending: list[tuple[Any, int, Path]], options: dict) -> None:
    from l2bn.experiments.distributed import init_distributed, shutdown_distributed
    from l2bn.experiments.train import train_run

    context = init_distributed(pending[0][0].device)
    try:
        for config, seed, directory in pending:
            train_run(config, seed, directory, context=context, **options)
    finally:
        shutdown_distributed(context)


def _run_parallel(pending: list[tuple[Any, int, Path]], options: dict, jobs: int, say: Any) -> None:
    """Runs in ``jobs`` spawned processes; on a terminal one bar counts finished epochs."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    cores = os.cpu_count() or 1
    say(f"l2bn compare: {len(pending)} run(s) on {jobs} worker process(es)")
    bar = _epoch_bar(pending, enabled=not options["quiet"])
    # with the bar on, workers stay quiet (their lines would break it)
    options = {**options, "progress_bars": False, "quiet": options["quiet"] or bar is not None}
    report = bar.write if bar is not None else say
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_ignore_sigint) as pool:
        futures = {}
        for config, seed, directory in pending:
            if config.threads is None:  # off the CPU (a CPU run's threads are settled)
                config = config.replace(threads=max(1, cores // jobs))
            future = pool.submit(_worker, config.to_dict(), seed, str(directory), options)
            futures[future] = directory
        try:
            waiting = set(futures)
            while waiting:
                done, waiting = wait(waiting, timeout=2.0, return_when=FIRST_COMPLETED)
                if bar is not None:
                    bar.update(_epochs_done(pending) - bar.n)
                for future in done:
                    result = future.result()
                    if result.get("interrupted"):
                        raise KeyboardInterrupt
                    best = result["best_test_acc"]
                    report(f"finished {futures[future]}: best test accuracy {best:.2f}%")
        except BaseException:
            workers = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            _interrupt_workers(workers)
            raise
        finally:
            if bar is not None:
                bar.close()


def _interrupt_workers(workers: list[Any]) -> None:
    """Stop the runs still going (as Ctrl-C would): each keeps its last checkpoint."""
    for process in workers:
        if process.is_alive():
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGINT)


def _epochs_done(pending: list[tuple[Any, int, Path]]) -> int:
    from l2bn.experiments.metrics_log import read_metrics
    from l2bn.experiments.runs import METRICS_FILE

    return sum(len(read_metrics(Path(d) / METRICS_FILE)) for _, _, d in pending)


def _epoch_bar(pending: list[tuple[Any, int, Path]], enabled: bool) -> Any:
    """A tqdm bar over all epochs of the pending runs, or None (quiet, or not a terminal)."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    total = sum(config.epochs for config, _, _ in pending)
    bar = tqdm(total=total, desc="epochs", unit="epoch", file=sys.stderr, dynamic_ncols=True)
    bar.update(_epochs_done(pending))
    return bar
