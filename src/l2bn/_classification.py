"""Which module of a network is its classification layer: the one rule shared by the angle
metrics (whose features are that layer's input), the training loop that captures them and
Table 4's "only classification layer" placement.

Private and torch only, so that every layer of ``pyproject.toml``'s [tool.importlinter]
contracts (norms below analysis, experiments above both) may import it.
"""

from __future__ import annotations

from torch import nn


def classification_layer(model: nn.Module) -> nn.Module | None:
    """``model.classifier`` if that attribute is a module, else the last ``nn.Linear``
    registered in ``model``, else None."""
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Module):
        return classifier
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None
