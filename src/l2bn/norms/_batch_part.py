"""The batch-normalization half shared by BCN and BIN (own buffers, no child BatchNorm).

The mixed norms keep their BN statistics in their own buffers instead of a child
``nn.BatchNorm2d``, so that :func:`l2bn.convert_bn_to_l2bn` never turns half of a
mixed norm into L2BN.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from l2bn.norms._running import momentum_factor


def batch_normalize(
    module: nn.Module,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    momentum: float | None,
) -> Tensor:
    """BatchNorm of ``x`` with ``module``'s running buffers, exactly as nn.BatchNorm2d."""
    use_batch_stats = module.training or module.running_mean is None
    factor = momentum_factor(module, momentum) if module.training else 0.0
    track = not module.training or module.num_batches_tracked is not None
    return F.batch_norm(
        x,
        module.running_mean if track else None,
        module.running_var if track else None,
        weight,
        bias,
        use_batch_stats,
        factor,
        eps,
    )
