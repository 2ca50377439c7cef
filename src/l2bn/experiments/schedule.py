"""Learning-rate schedules of the paper, evaluated per iteration at fractional epochs.

* ``cosine``: supplement Table 1 (cosine decay from ``lr`` to ``min_lr``), after an optional
  linear warm-up (RegNet: 5 epochs).
* ``multistep``: DenseNet row of Table 1 (``lr * gamma**k`` after the k-th milestone).
* ``cosine_restarts``: section 4.2 (acoustic scenes): cosine from ``lr`` to ``min_lr`` within
  each segment, restarting after each epoch listed in ``restart_epochs``.

The schedule is a pure function of the iteration count, wrapped in ``LambdaLR`` so that its
state (the iteration count) is checkpointed like any torch scheduler.
"""

from __future__ import annotations

import bisect
import math

import torch

from l2bn.experiments.config import ExperimentConfig


def lr_at(config: ExperimentConfig, epoch: float) -> float:
    """The learning rate at fractional epoch ``epoch`` (0 <= epoch <= config.epochs)."""
    base, low = config.lr, config.min_lr
    warmup = config.warmup_epochs
    if warmup > 0 and epoch < warmup:
        return base * epoch / warmup
    if config.scheduler == "multistep":
        return base * config.gamma ** bisect.bisect_right(config.milestones, epoch)
    if config.scheduler == "cosine":
        start, end = float(warmup), float(config.epochs)
    else:  # cosine_restarts
        bounds = [0.0, *[float(e) for e in config.restart_epochs if e < config.epochs]]
        index = bisect.bisect_right(bounds, epoch) - 1
        start = bounds[index]
        end = bounds[index + 1] if index + 1 < len(bounds) else float(config.epochs)
    progress = min(max((epoch - start) / max(end - start, 1e-12), 0.0), 1.0)
    return low + (base - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _Factor:
    """``lr_at / lr`` as a function of the iteration count (picklable, no state)."""

    def __init__(self, config: ExperimentConfig, steps_per_epoch: int) -> None:
        self.config = config
        self.steps_per_epoch = steps_per_epoch

    def __call__(self, step: int) -> float:
        # warm-up counts the current step as done, so the first step does not use lr 0
        epoch = step / self.steps_per_epoch
        if self.config.warmup_epochs > 0 and epoch < self.config.warmup_epochs:
            epoch = (step + 1) / self.steps_per_epoch
        return lr_at(self.config, epoch) / self.config.lr if self.config.lr else 0.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: ExperimentConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration scheduler: call ``step()`` after every optimizer step."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    for group in optimizer.param_groups:
        group["lr"] = config.lr
        group.setdefault("initial_lr", config.lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _Factor(config, steps_per_epoch))
