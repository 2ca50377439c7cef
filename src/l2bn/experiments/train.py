"""One training run: model, data, SGD with Nesterov momentum, per-epoch metrics, checkpoints.

The settings follow the supplement's section B (Table 1 rows are presets). Every epoch logs
loss and accuracy on train and test data and, with ``metrics`` on, the intra-angle,
inter-angle and IIR of the classification layer's input (supplement eqs. 1-3, paper eq. 4,
measured as in section 4.1: class centers from training features).

Reproducibility: the model is initialized after ``torch.manual_seed(seed)``; every source of
randomness in epoch ``e`` (data order and augmentation inside ``build_loader``, mixup, dropout)
is seeded from ``(seed, e, rank)`` alone. A run resumed from the checkpoint of epoch ``e``
therefore ends with exactly the weights of an uninterrupted run (same seed, CPU, threads).

Divergence: an epoch whose training loss, test loss, model weights (parameters or
buffers) or classifier features are NaN or infinite is recorded with ``diverged`` naming
them in ``metrics.jsonl`` (its angle metrics null), and the run stops there, finished as
diverged (``done`` says at which epoch): SGD cannot bring non-finite weights back, and a
model whose evaluation overflows has no test loss or angles to report. The report shows
such a run as diverged; rerunning does not train it again.

Integrity: a run directory is bound to its run's identity by a fingerprint
(:mod:`l2bn.experiments.identity`) and is written by one process at a time
(:mod:`l2bn.experiments.run_lock`); the data are read before anything is written.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from l2bn.experiments import checkpoint as ckpt
from l2bn.experiments.config import ExperimentConfig
from l2bn.experiments.distributed import (
    DistContext,
    convert_sync_norms,
    env_world_size,
    init_distributed,
    norm_batch,
    shutdown_distributed,
    wrap_model,
)
from l2bn.experiments.errors import RunExistsError, UsageError
from l2bn.experiments.evaluation import evaluate_epoch
from l2bn.experiments.identity import (
    clear_run,
    fingerprint,
    inspect_run,
    mismatch_error,
    run_identity,
    settle_threads,
    write_identity,
)
from l2bn.experiments.metrics_log import append_metrics, keep_epochs_before, read_metrics
from l2bn.experiments.progress import progress
from l2bn.experiments.run_lock import run_lock
from l2bn.experiments.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DONE_FILE,
    METRICS_FILE,
    PREVIOUS_CHECKPOINT_FILE,
    variant_name,
    write_done,
)
from l2bn.experiments.schedule import build_scheduler

__all__ = ["KILL_ENV", "RunExistsError", "build_model", "check_subsets", "derive_seed", "train_run"]

# Test hook: "EPOCH:STEP" (0-based) makes the process kill itself with SIGKILL there.
KILL_ENV = "L2BN_TEST_KILL_AT"

_MASK64 = (1 << 64) - 1


def derive_seed(*values: int) -> int:
    """A 63-bit seed from integers (SplitMix64 steps): one stream per (seed, epoch, rank, use)."""
    state = 0x2545F4914F6CDD1D
    for value in values:
        state = (state + (int(value) & _MASK64) + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state & ((1 << 63) - 1)


def build_model(config: ExperimentConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The zoo model with ``config.norm`` everywhere, or L2BN placed as in Table 4."""
    from l2bn.models import create_model

    if config.l2bn_layers != "all":
        from l2bn.norms.placement import apply_l2bn

        model = create_model(
            config.model, num_classes=num_classes, in_channels=in_channels, norm_layer="bn"
        )
        return apply_l2bn(model, config.l2bn_layers)
    norm_layer: Any = config.norm
    if config.norm_kwargs:
        from l2bn.norms import get_norm_layer

        norm_layer = get_norm_layer(config.norm, **config.norm_kwargs)
    return create_model(
        config.model, num_classes=num_classes, in_channels=in_channels, norm_layer=norm_layer
    )


def check_subsets(config: ExperimentConfig, train_set: Any, test_set: Any) -> None:
    """UsageError when ``train_subset`` or ``test_subset`` asks for more samples than the
    split holds (known only once the data are read; otherwise the run would stop there
    after its directory was written, or after an epoch of training)."""
    for key, dataset, split in (
        ("train_subset", train_set, "train"),
        ("test_subset", test_set, "test"),
    ):
        wanted = getattr(config, key)
        if wanted is not None and wanted > len(dataset):
            raise UsageError(
                f"{key} {wanted} is larger than the {split} split of {config.dataset} "
                f"({len(dataset)} samples)"
            )


def _kill_point() -> tuple[int, int] | None:
    value = os.environ.get(KILL_ENV)
    if not value:
        return None
    epoch, _, step = value.partition(":")
    return int(epoch), int(step or 0)


def _train_batch_inputs(
    images: torch.Tensor,
    labels: torch.Tensor,
    config: ExperimentConfig,
    num_classes: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mixup (RegNet recipe, acoustic recipe) and label smoothing as soft targets, or None."""
    from l2bn.data import mixup, smooth_targets

    if config.mixup_alpha > 0:
        images, targets = mixup(
            images,
            labels,
            num_classes,
            config.mixup_alpha,
            generator,
            per_sample=config.mixup_per_sample,
        )
        if config.label_smoothing > 0:
            targets = (
                targets * (1.0 - config.label_smoothing) + config.label_smoothing / num_classes
            )
        return images, targets
    if config.label_smoothing > 0:
        return images, smooth_targets(labels, num_classes, config.label_smoothing)
    return images, None


@contextlib.contextmanager
def _tensorboard(directory: Path, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError(
            "--tensorboard needs the tensorboard package: pip install 'l2bn[tensorboard]'"
        ) from err
    writer = SummaryWriter(log_dir=str(directory / "tensorboard"))
    try:
        yield writer
    finally:
        writer.close()


def train_run(
    config: ExperimentConfig,
    seed: int,
    directory: str | Path,
    *,
    resume: bool = True,
    overwrite: bool = False,
    quiet: bool = False,
    tensorboard: bool = False,
    sync_bn: bool = False,
    context: DistContext | None = None,
    progress_bars: bool = True,
) -> dict[str, Any]:
    """Train one seed of ``config`` into ``directory``; returns the run summary.

    A finished run of the same identity (fingerprint) is not repeated. An unfinished one
    continues from its last good checkpoint when ``resume`` is true; otherwise
    RunExistsError is raised. A directory holding a run of another identity raises
    RunMismatchError. With ``overwrite`` whatever the directory holds (a run of another
    identity, or this run, finished or not) is cleared and the run trained afresh.

    On a CPU, ``config.threads`` None means: the thread count the directory's run started
    with, or for a new run this process's torch threads (:func:`settle_threads`).

    The number of processes (``context``'s, else the torchrun job's) and ``sync_bn`` decide
    the norm batch, part of the run's identity: a finished run with another norm batch is
    not this one.
    """
    directory = Path(directory)
    config = config.replace(seeds=[seed])
    world_size = context.world_size if context is not None else env_world_size()
    job = {"world_size": world_size, "sync_bn": sync_bn}
    config = settle_threads(config, directory, torch.get_num_threads(), not overwrite)
    identity = run_identity(config, seed, **job)
    state = inspect_run(directory, identity)
    if state.holds_run and not state.same and not overwrite:
        raise mismatch_error(directory, state)
    if state.same and state.done and not overwrite:
        return _read_summary(directory)
    own_context = context is None
    context = context or init_distributed(config.device)
    try:
        bars = progress_bars and not quiet
        return _train(
            config,
            seed,
            directory,
            identity,
            resume,
            overwrite,
            quiet,
            bars,
            tensorboard,
            sync_bn,
            context,
        )
    finally:
        if own_context:
            shutdown_distributed(context)


def _read_summary(directory: Path) -> dict[str, Any]:
    import json

    return json.loads((directory / DONE_FILE).read_text(encoding="utf-8"))


def _prepare_directory(
    directory: Path,
    config: ExperimentConfig,
    identity: dict[str, Any],
    resume: bool,
    overwrite: bool,
) -> bool:
    """Under the run's lock: check (or, with ``overwrite``, clear) what the directory
    holds, then bind it to ``identity``. True when the run turns out to be finished."""
    state = inspect_run(directory, identity)
    if state.holds_run and overwrite:
        clear_run(directory)
    elif state.holds_run and not state.same:
        raise mismatch_error(directory, state)
    elif state.done:
        return True
    has_checkpoint = any(
        (directory / name).exists() for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE)
    )
    if has_checkpoint and not resume:
        raise RunExistsError(
            f"{directory} holds an unfinished run of this configuration (it has a "
            "checkpoint); pass --resume to continue it"
        )
    write_identity(directory, identity)
    tmp = directory / (CONFIG_FILE + ".tmp")
    tmp.write_text(config.to_yaml(), encoding="utf-8")
    os.replace(tmp, directory / CONFIG_FILE)  # other ranks may be reading it
    return False


def _train(
    config: ExperimentConfig,
    seed: int,
    directory: Path,
    identity: dict[str, Any],
    resume: bool,
    overwrite: bool,
    quiet: bool,
    bars: bool,
    tensorboard: bool,
    sync_bn: bool,
    context: DistContext,
) -> dict[str, Any]:
    from l2bn.data import load_dataset

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    # the data first: a missing or faulty dataset stops the run before anything is written
    data_kwargs = dict(config.dataset_kwargs)
    train_set = load_dataset(config.dataset, root=config.data_root, train=True, **data_kwargs)
    test_set = load_dataset(config.dataset, root=config.data_root, train=False, **data_kwargs)
    check_subsets(config, train_set, test_set)
    lock = run_lock(directory) if context.is_main else contextlib.nullcontext()
    with lock:
        finished = False
        if context.is_main:
            finished = _prepare_directory(directory, config, identity, resume, overwrite)
        context.barrier()
        if finished:
            return _read_summary(directory)
        return _train_locked(
            config,
            seed,
            directory,
            fingerprint(identity),
            quiet,
            bars,
            tensorboard,
            sync_bn,
            context,
            train_set,
            test_set,
        )


def _resume_point(
    directory: Path, run_fingerprint: str, seed: int, context: DistContext
) -> ckpt.FoundCheckpoint | None:
    """The checkpoint to resume from, after checking that it belongs to this run; a newer
    one that failed to load is set aside (rank 0) before the first save."""
    found = ckpt.find_latest_checkpoint(directory)
    context.barrier()  # every rank has read it before rank 0 moves a damaged file
    if found is None:
        return None
    ckpt.check_checkpoint_belongs(found.path, found.state, run_fingerprint, seed)
    if found.problems and context.is_main:
        kept = [ckpt.set_aside(path) for path in found.rejected if path.exists()]
        where = f"; the damaged file is kept as {', '.join(map(str, kept))}" if kept else ""
        warnings.warn(
            f"{'; '.join(found.problems)}; resuming from the previous good checkpoint "
            f"{found.path} (epoch {found.state['epoch']}){where}",
            RuntimeWarning,
            stacklevel=3,
        )
    return found


def _train_locked(
    config: ExperimentConfig,
    seed: int,
    directory: Path,
    run_fingerprint: str,
    quiet: bool,
    bars: bool,
    tensorboard: bool,
    sync_bn: bool,
    context: DistContext,
    train_set: Any,
    test_set: Any,
) -> dict[str, Any]:
    from l2bn.data import build_loader

    device = context.device
    found = _resume_point(directory, run_fingerprint, seed, context)
    num_classes = int(train_set.num_classes)

    torch.manual_seed(seed)
    model = build_model(config, num_classes, int(train_set.in_channels)).to(device)
    synced = sync_bn and context.distributed
    if synced:
        model = convert_sync_norms(model, device)
    net = wrap_model(model, context)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
    )
    _clip_bin_gates_after_each_step(optimizer, model)

    if config.batch_size % context.world_size:
        raise ValueError(
            f"batch_size {config.batch_size} (the total over all processes, as in the paper) "
            f"is not divisible by the {context.world_size} processes"
        )
    batch_per_process = config.batch_size // context.world_size

    def train_loader(epoch: int) -> Any:
        return build_loader(
            train_set,
            batch_size=batch_per_process,
            train=True,
            seed=seed,
            epoch=epoch,
            augment=config.augment,
            subset=config.train_subset,
            num_replicas=context.world_size,
            rank=context.rank,
            drop_last=False,
            num_workers=config.num_workers,
        )

    eval_batch = config.eval_batch_size or config.batch_size
    steps_per_epoch = len(train_loader(0))
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)

    start_epoch, best_acc, best_epoch = 0, -math.inf, 0
    run_norm_batch = norm_batch(
        config.batch_size, context.world_size, synced, config.norm, config.norm_kwargs
    )
    if found is not None:
        state = found.state
        _check_norm_batch(found.path, state, config.batch_size, run_norm_batch)
        ckpt.load_model_state(model, state["model"], source=f"checkpoint {found.path}")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        _realign_schedule(scheduler, start_epoch * steps_per_epoch)
        best_acc, best_epoch = float(state["best_acc"]), int(state["best_epoch"])
    diverged_before = False
    if context.is_main:
        keep_epochs_before(directory / METRICS_FILE, start_epoch + 1)
        rows = read_metrics(directory / METRICS_FILE) if found is not None else []
        diverged_before = bool(rows and rows[-1].get("diverged"))
    # resumed after a diverged epoch (killed before its done marker): nothing to train
    diverged_before = _on_every_rank(diverged_before, context)
    end_epoch = start_epoch if diverged_before else config.epochs

    label = f"{variant_name(config)} seed{seed}"
    show = bars and context.is_main
    kill_at = _kill_point()
    started = time.time()
    with _tensorboard(directory, tensorboard and context.is_main) as writer:
        for epoch in range(start_epoch, end_epoch):
            tick = time.time()
            torch.manual_seed(derive_seed(seed, epoch, context.rank, 0))
            mix_generator = torch.Generator().manual_seed(derive_seed(seed, epoch, context.rank, 1))
            loader = train_loader(epoch)
            epoch_lr = optimizer.param_groups[0]["lr"]
            net.train()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            desc = f"{label} epoch {epoch + 1}/{config.epochs}"
            for step, (images, labels) in enumerate(
                progress(loader, total=len(loader), desc=desc, enabled=show)
            ):
                if kill_at == (epoch, step):
                    os.kill(os.getpid(), signal.SIGKILL)
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                images, targets = _train_batch_inputs(
                    images, labels, config, num_classes, mix_generator
                )
                logits = net(images)
                if targets is None:
                    loss = F.cross_entropy(logits, labels)
                else:
                    from l2bn.data import soft_cross_entropy

                    loss = soft_cross_entropy(logits, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                padding = loader.padding(step).to(device)
                batch_loss, batch_correct, batch_seen = _batch_sums(
                    loss, logits, labels, targets, padding
                )
                loss_sum += batch_loss
                correct += batch_correct
                seen += batch_seen
            loss_total, correct_total, seen_total = _sum_over_ranks(
                (loss_sum, correct, seen), context
            )
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "lr": epoch_lr,
                "train_loss": loss_total / max(seen_total, 1),
                "train_acc": 100.0 * correct_total / max(seen_total, 1),
            }
            diverged = False
            if context.is_main:
                row.update(
                    evaluate_epoch(
                        model, train_set, test_set, config, seed, eval_batch, device, show
                    )
                )
                row["diverged"] = _divergence(row, model)
                diverged = row["diverged"] is not None
                row["seconds"] = time.time() - tick
                if row["test_acc"] > best_acc:
                    best_acc, best_epoch = row["test_acc"], epoch + 1
                append_metrics(directory / METRICS_FILE, row)
                ckpt.save_checkpoint(
                    directory,
                    {
                        "epoch": epoch + 1,
                        "model": ckpt.unwrap(model).state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": ckpt.scheduler_state(scheduler),
                        "best_acc": best_acc,
                        "best_epoch": best_epoch,
                        "seed": seed,
                        "fingerprint": run_fingerprint,
                        "world_size": context.world_size,
                        "norm_batch": run_norm_batch,
                        "config": config.to_dict(),
                    },
                )
                if writer is not None:
                    for key, value in row.items():
                        if key != "epoch" and isinstance(value, (int, float)):
                            writer.add_scalar(key, value, epoch + 1)
                if not quiet:
                    print(_epoch_line(label, row, config.epochs), file=sys.stderr, flush=True)
            context.barrier()
            if _on_every_rank(diverged, context):
                break

    summary = _summary(directory, config, seed, time.time() - started, run_norm_batch)
    if context.is_main:
        write_done(directory, summary)
    context.barrier()
    return summary


def _clip_bin_gates_after_each_step(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """BIN (Table 5): project every gate ``rho`` back onto [0, 1] after each
    ``optimizer.step()``, the update rule of Nam & Kim (2018).

    Without it a gate pushed past 1 or below 0 gets no gradient through the forward's
    ``gate.clamp(0, 1)`` and stays stuck (below 0, weight decay never brings it back).
    Nothing is installed for a model without BIN layers.
    """
    from l2bn.norms import BatchInstanceNorm2d, install_gate_clipping

    if any(isinstance(m, BatchInstanceNorm2d) for m in model.modules()):
        install_gate_clipping(optimizer, model)


def _not_finite_state(model: nn.Module) -> bool:
    """Whether any floating-point parameter or buffer of ``model`` is NaN or infinite."""
    return any(
        t.is_floating_point() and not bool(torch.isfinite(t).all())
        for t in ckpt.unwrap(model).state_dict().values()
    )


def _divergence(row: dict[str, Any], model: nn.Module) -> str | None:
    """``"training loss, weights not finite"`` when the epoch diverged, else None (pops the
    evaluation's ``not_finite`` from ``row``)."""
    evaluation = row.pop("not_finite", [])
    what = []
    if not math.isfinite(row["train_loss"]):
        what.append("training loss")
    what += [w for w in evaluation if w == "test loss"]
    if _not_finite_state(model):
        what.append("weights")
    what += [w for w in evaluation if w != "test loss"]
    return f"{', '.join(what)} not finite" if what else None


def _on_every_rank(flag: bool, context: DistContext) -> bool:
    """Rank 0's ``flag`` on every process (only rank 0 evaluates)."""
    if not context.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=context.device)
    torch.distributed.broadcast(value, 0)
    return bool(value.item())


def _batch_sums(
    loss: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor | None,
    padding: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A training batch's part of the epoch's loss and accuracy: summed loss, correct
    predictions and sample count over its samples that are not ``padding`` (True: a repeat
    that gives this rank as many samples as the others, ``EpochLoader.padding``), so that
    over all ranks the epoch's metrics count each sample once. ``loss`` is the batch's mean
    loss (what trains), ``targets`` the soft targets (None: ``labels``)."""
    logits = logits.detach()
    keep = ~padding
    correct = (logits.argmax(1) == labels)[keep].sum()
    count = int(keep.sum())
    if count == labels.numel():
        return loss.detach().double() * count, correct, count
    # F.cross_entropy takes soft targets too (class probabilities: soft_cross_entropy's sum)
    target = labels if targets is None else targets
    losses = F.cross_entropy(logits, target, reduction="none")
    return losses[keep].double().sum(), correct, count


def _sum_over_ranks(values: tuple[Any, ...], context: DistContext) -> list[float]:
    """The sums over every rank of this rank's ``values`` (numbers or 0-d tensors): the
    epoch's training loss and accuracy are over the samples of all processes, each counted
    once (:func:`_batch_sums` leaves the sampler's padding out)."""
    totals = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if context.distributed:
        totals = totals.to(context.device)
        torch.distributed.all_reduce(totals)
    return totals.tolist()


def _check_norm_batch(path: Path, state: dict[str, Any], batch_size: int, norm_batch: int) -> None:
    """RunExistsError when the checkpoint's norms used batch statistics over another number
    of samples (another number of processes, --sync-bn or not): resuming would silently
    continue another training than the one the run started."""
    saved = ckpt.recorded_norm_batch(state, batch_size)
    if saved is None or saved == norm_batch:
        return
    raise RunExistsError(
        f"checkpoint {path} was trained with batch statistics over {saved} samples per "
        f"norm layer (world size {state.get('world_size', 1)}), this process would use "
        f"{norm_batch}: resume it with the same number of processes and --sync-bn setting "
        "(--sync-bn under torchrun gives the statistics of the whole batch, as one process)"
    )


def _realign_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Put the per-iteration schedule at ``step``: a checkpoint written with another number
    of processes (so another number of steps per epoch) resumes at the right point."""
    scheduler.last_epoch = step
    lrs = [
        base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    ]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs


def _epoch_line(label: str, row: dict[str, Any], epochs: int) -> str:
    line = (
        f"{label} epoch {row['epoch']}/{epochs}: lr {row['lr']:.4g} "
        f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% | "
        f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.2f}%"
    )
    if row.get("iir_test") is not None:
        line += f" | IIR train {row['iir_train']:.3f} test {row['iir_test']:.3f}"
    if row.get("angles_undefined"):
        line += f" | angles undefined ({row['angles_undefined']})"
    if row.get("diverged"):
        line += f" | DIVERGED ({row['diverged']}): the run stops here"
    return line + f" ({row['seconds']:.1f} s)"


def _summary(
    directory: Path, config: ExperimentConfig, seed: int, seconds: float, norm_batch: int
) -> dict:
    """The ``done`` marker's summary; it records the run's norm batch (which a finished
    run's identity names only when it is not the whole batch)."""
    rows = read_metrics(directory / METRICS_FILE)
    best = max(rows, key=lambda r: r["test_acc"]) if rows else {}
    summary = {
        "seed": seed,
        "epochs": config.epochs,
        "norm_batch": norm_batch,
        "best_test_acc": best.get("test_acc"),
        "best_epoch": best.get("epoch"),
        "final": rows[-1] if rows else {},
        "seconds_this_session": seconds,
    }
    diverged = next((r for r in rows if r.get("diverged")), None)
    if diverged is not None:
        summary["diverged"] = diverged["diverged"]
        summary["diverged_epoch"] = diverged.get("epoch")
    return summary
