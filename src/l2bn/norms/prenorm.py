"""Table 3's alternatives to the l2 normalization of L2BN: LNBN, INBN and PNBN.

Each is a parameter-free normalization of the sample followed by an ordinary
BatchNorm2d (the paper's "LNB", "INB", "PNB"): Layer Normalization over each
sample's whole (C, H, W) map, Instance Normalization per (sample, channel) over
(H, W), or Positional Normalization per (sample, position) over C. None of the
pre-normalizations has an affine (Table 3: the following BN would make it useless).

They subclass :class:`torch.nn.BatchNorm2d`, so parameters, buffers and
``state_dict`` keys are those of BatchNorm2d; the converters in :mod:`l2bn.convert`
leave them alone (they match exact types). Being BatchNorms, they would be reached by
BatchNorm recipes that would silently drop the pre-normalization, so their class marker
``l2bn_prenorm`` makes conv-BN folding refuse them (:func:`l2bn.fusion.fold_refusal`),
``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` and l2bn's sync converters leave them
unsynchronized with a warning (:mod:`l2bn.sync_convert`), and :func:`l2bn.freeze` warns
that they keep training (timm's and torchvision's frozen BatchNorm would be plain BN).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from l2bn.convert import register_other_norm
from l2bn.fusion import install_fusion_guards
from l2bn.sync_convert import install_sync_guard


class _PreNormBatchNorm2d(nn.BatchNorm2d):
    """A parameter-free per-sample normalization, then BatchNorm2d."""

    # Marks the pre-normalized BatchNorms (see l2bn.fusion.fold_refusal): what each sample
    # goes through before the BatchNorm, in the words of the errors and warnings.
    l2bn_prenorm = "a per-sample normalization"

    def __init__(self, num_features: int, *args: Any, pre_eps: float = 1e-5, **kwargs: Any):
        super().__init__(num_features, *args, **kwargs)
        if pre_eps < 0:
            raise ValueError(f"pre_eps must be non-negative, got {pre_eps}")
        self.pre_eps = float(pre_eps)

    def prenormalize(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        return super().forward(self.prenormalize(input))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pre_eps={self.pre_eps}"


class LayerNormBatchNorm2d(_PreNormBatchNorm2d):
    """LNBN: LayerNorm over each sample's (C, H, W) without affine, then BN (Table 3)."""

    l2bn_prenorm = "LayerNorm over (C, H, W)"

    def prenormalize(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[1:], eps=self.pre_eps)


class InstanceNormBatchNorm2d(_PreNormBatchNorm2d):
    """INBN: InstanceNorm per (sample, channel) over (H, W) without affine, then BN."""

    l2bn_prenorm = "InstanceNorm over (H, W)"

    def prenormalize(self, x: Tensor) -> Tensor:
        return F.instance_norm(x, eps=self.pre_eps)


class PositionNormBatchNorm2d(_PreNormBatchNorm2d):
    """PNBN: PositionalNorm per (sample, h, w) over the channels without affine, then BN."""

    l2bn_prenorm = "PositionalNorm over the channels"

    def prenormalize(self, x: Tensor) -> Tensor:
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) * (var + self.pre_eps).rsqrt()


# LNBN / INBN / PNBN are BatchNorm subclasses of their own: L2BN's converters leave them alone.
register_other_norm(_PreNormBatchNorm2d)
# torch's BatchNorm recipes must not turn them into plain BatchNorm (both idempotent).
install_fusion_guards()
install_sync_guard()
