"""How ``torch.fx.symbolic_trace`` records an L2BN layer: as one call of the layer, the way
it records torch's own BatchNorm (a leaf module).

FX traces into every module whose class is not from ``torch.nn``. Traced into, a layer's
``self.training`` became a constant of the graph: a model traced in training mode kept
using batch statistics (and moving the running statistics) after ``.eval()``, silently.
Recorded as a ``call_module`` node, the traced ``GraphModule`` calls the layer itself,
which reads its mode when it runs, as BatchNorm does.
"""

from __future__ import annotations

import torch
from torch import nn

_Proxy = torch.fx.Proxy


def as_fx_leaf(module: nn.Module, input: object) -> object | None:
    """Under ``torch.fx`` symbolic tracing (``input`` a ``Proxy``), a ``call_module`` node
    of ``module`` (its output proxy); otherwise None, and the layer runs its forward.

    Also None where FX cannot name the module: the traced root itself (FX traces a root
    BatchNorm into as well) or a module that is not a submodule of the root; there the
    layer's one wrapped call records the mode it was traced in.
    """
    if not isinstance(input, _Proxy):
        return None
    tracer = input.tracer
    try:
        path = tracer.path_of_module(module)
    except NameError:
        return None
    if not path:
        return None
    return tracer.create_proxy("call_module", path, (input,), {})
