"""Normalization layers of the paper's comparisons, built by name.

``create_norm(name, num_features, **kwargs)``, ``get_norm_layer(name, **kwargs)``,
``list_norms()`` and ``canonical_norm(name, kwargs)`` (one spelling per layer); the layers
themselves live one family per module (prenorm: Table 3; group, switchable, batch_channel,
batch_instance: Table 5);
:mod:`l2bn.norms.placement` applies L2BN to selected layers (Table 4).
"""

from l2bn.norms import placement
from l2bn.norms.batch_channel import BatchChannelNorm2d, bcn_num_groups
from l2bn.norms.batch_instance import BatchInstanceNorm2d, clip_gates_, install_gate_clipping
from l2bn.norms.prenorm import (
    InstanceNormBatchNorm2d,
    LayerNormBatchNorm2d,
    PositionNormBatchNorm2d,
)
from l2bn.norms.registry import (
    NormLayer,
    canonical_norm,
    create_norm,
    get_norm_layer,
    list_norms,
)
from l2bn.norms.switchable import SwitchableNorm2d

__all__ = [
    "BatchChannelNorm2d",
    "BatchInstanceNorm2d",
    "InstanceNormBatchNorm2d",
    "LayerNormBatchNorm2d",
    "NormLayer",
    "PositionNormBatchNorm2d",
    "SwitchableNorm2d",
    "bcn_num_groups",
    "canonical_norm",
    "clip_gates_",
    "create_norm",
    "get_norm_layer",
    "install_gate_clipping",
    "list_norms",
    "placement",
]
