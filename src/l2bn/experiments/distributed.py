"""Multi-process training under ``torchrun`` (paper section 4.1 trains ImageNet at batch 256
across GPUs): process-group set-up from the environment, DDP wrapping and synchronized norms.

``torchrun --nproc_per_node=N`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT``; without them training runs in one process. The backend is ``nccl`` on
CUDA and ``gloo`` on CPU.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from l2bn.sync_convert import convert_sync_l2batchnorm, prenorm_left_reason


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job: ``world_size == 1`` means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA (this process's local GPU) when available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def env_world_size() -> int:
    """The number of processes of the torchrun job this process belongs to (``WORLD_SIZE``;
    1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def norm_batch(
    batch_size: int,
    world_size: int,
    sync_bn: bool,
    norm: str = "bn",
    norm_kwargs: dict[str, Any] | None = None,
) -> int:
    """The norm batch: the samples whose statistics a batch norm layer uses at each step.
    The whole batch in one process, or under torchrun with ``--sync-bn`` when the norm
    ``norm`` (with ``norm_kwargs``) is one that ``--sync-bn`` synchronizes
    (:func:`synchronizes`); else each process's share of it (``batch_size`` is the total
    over all processes)."""
    if world_size <= 1 or (sync_bn and synchronizes(norm, norm_kwargs)):
        return batch_size
    return batch_size // world_size


def synchronizes(norm: str, norm_kwargs: dict[str, Any] | None = None) -> bool:
    """Whether ``--sync-bn`` makes a layer of ``norm`` compute its batch statistics over
    the whole batch: :func:`convert_sync_norms` converts it (BN, L2BN), or it has none (LN,
    IN, GN), rather than leaving it per process with a ``ConversionWarning`` (LNBN, INBN,
    PNBN, SN, BCN, BIN). Decided by converting one layer built on the meta device."""
    from l2bn.convert import ConversionWarning
    from l2bn.norms import create_norm

    with torch.device("meta"):
        model = nn.Sequential(create_norm(norm, 16, **(norm_kwargs or {})))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_sync_norms(model, torch.device("cuda"))  # no CPU refusal of plain BN here
    return not any(issubclass(w.category, ConversionWarning) for w in caught)


def init_distributed(device_name: str = "auto") -> DistContext:
    """Join the torchrun job described by the environment, or return a one-process context."""
    world_size = env_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size <= 1:
        return DistContext(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist = torch.distributed
    if dist.is_initialized():
        return DistContext(rank, world_size, local_rank, device, initialized_here=False)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, device, initialized_here=True)


def shutdown_distributed(context: DistContext) -> None:
    if context.initialized_here and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


_PLAIN_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def convert_sync_norms(model: nn.Module, device: torch.device) -> nn.Module:
    """Synchronize batch statistics across processes, keeping each layer's kind.

    L2BN layers become ``l2bn.SyncL2BatchNorm`` (works on CPU with gloo and on GPUs) and
    plain BatchNorm layers become ``torch.nn.SyncBatchNorm``, which torch runs on CUDA only:
    on a CPU, a model with plain BatchNorm layers raises ValueError. LNBN, INBN and PNBN
    have no synchronized counterpart: they are left unsynchronized with a
    ``ConversionWarning`` naming each, and so are the mixed norms SN, BCN and BIN, whose
    batch statistics are their own (each process's part of the batch). Other norms are
    left alone (their own BatchNorm sub-layers are converted).
    """
    from l2bn.convert import ConversionWarning
    from l2bn.fusion import prenorm_description
    from l2bn.layers import is_l2_batch_norm
    from l2bn.norms._batch_stats_base import BatchStatsNorm2d

    def swap(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            qualified = f"{prefix}.{name}" if prefix else name
            if is_l2_batch_norm(child):
                new = convert_sync_l2batchnorm(child)
            elif type(child) in _PLAIN_BATCH_NORMS:
                if device.type != "cuda":
                    raise ValueError(
                        f"--sync-bn: layer {qualified} is a plain {type(child).__name__}, and "
                        "torch.nn.SyncBatchNorm runs on CUDA only; on a CPU, run without "
                        "--sync-bn (each process then normalizes over its own part of the batch)"
                    )
                new = nn.SyncBatchNorm.convert_sync_batchnorm(child)
            elif prenorm_description(child) is not None:
                warnings.warn(
                    f"--sync-bn: layer {qualified} is a {type(child).__name__}, "
                    f"{prenorm_left_reason(child)}",
                    ConversionWarning,
                    stacklevel=3,
                )
                continue
            elif isinstance(child, BatchStatsNorm2d):
                warnings.warn(
                    f"--sync-bn: layer {qualified} is a {type(child).__name__}, a mixed norm "
                    "with batch statistics of its own that has no synchronized counterpart: "
                    "left as it is (not synchronized; its batch statistics are each "
                    "process's own)",
                    ConversionWarning,
                    stacklevel=3,
                )
                continue
            else:
                swap(child, qualified)
                continue
            setattr(module, name, new)

    swap(model, "")
    return model


def wrap_model(model: nn.Module, context: DistContext) -> nn.Module:
    """DistributedDataParallel around ``model`` when the job has several processes."""
    if not context.distributed:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
