"""Analysis tools of the paper: intra-angle, inter-angle, IIR and the toy geometry.

* :func:`class_centers`, :func:`angle_metrics`, :func:`train_test_metrics` — supplement
  eqs. 1-3 and paper eq. 4 on in-memory features;
* :class:`AngleAccumulator` — the same measures streamed over batches;
* :func:`collect_features` — the input of a model's classification layer;
* :func:`simulate_layers`, :func:`simulate_intra_class` — Figures 2, 4 and 5.

Importable with torch alone; the ``l2bn geometry`` command draws with matplotlib.
"""

from l2bn.analysis._core import UndefinedAngleError
from l2bn.analysis.angles import angle_metrics, class_centers, train_test_metrics
from l2bn.analysis.capture import collect_features
from l2bn.analysis.geometry import (
    GeometryResult,
    IntraClassResult,
    min_pairwise_angle,
    simulate_intra_class,
    simulate_layers,
)
from l2bn.analysis.streaming import AngleAccumulator

__all__ = [
    "AngleAccumulator",
    "GeometryResult",
    "IntraClassResult",
    "UndefinedAngleError",
    "angle_metrics",
    "class_centers",
    "collect_features",
    "min_pairwise_angle",
    "simulate_intra_class",
    "simulate_layers",
    "train_test_metrics",
]
