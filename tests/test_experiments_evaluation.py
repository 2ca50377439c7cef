"""The end-of-epoch evaluation records the classification layer's input as the layer
receives it: the features of the test intra-angle (paper section 4.1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from l2bn.experiments.evaluation import classifier_module, evaluate


class _InPlaceHead(nn.Module):
    """A body, then a classifier whose first step changes its input in place."""

    def __init__(self, twice: bool = False) -> None:
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.classifier = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(6, 3))
        self.twice = twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.body(x))
        return logits + self.classifier(self.body(x)) if self.twice else logits


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(5, 4, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(3)
    ]


def test_features_are_the_classifier_input_before_it_changes_it_in_place() -> None:
    """The in-place ReLU at the classifier's start used to rewrite the captured view: the
    recorded features had no negative value left and the test intra-angle was computed on
    them, without an error."""
    torch.manual_seed(0)
    model = _InPlaceHead()
    batches = _batches()
    result = evaluate(model, batches, torch.device("cpu"), capture=classifier_module(model))
    with torch.no_grad():
        expected = torch.cat([model.body(x) for x, _ in batches])
    assert expected.min() < 0
    torch.testing.assert_close(result["features"], expected, rtol=0, atol=0)
    assert torch.equal(result["labels"], torch.cat([y for _, y in batches]))


def test_a_classifier_that_runs_twice_a_forward_is_refused() -> None:
    torch.manual_seed(0)
    model = _InPlaceHead(twice=True)
    with pytest.raises(RuntimeError, match="ran 2 times in one forward pass"):
        evaluate(model, _batches(), torch.device("cpu"), capture=classifier_module(model))
    assert model.training  # the mode is restored


def test_a_test_class_without_training_features_leaves_the_training_angles() -> None:
    """A metrics subset of the training set that misses a class gives that class no
    center: the test-side angles are undefined (and say why), the training side is not.
    Before, every angle metric of the epoch was None."""
    from l2bn.analysis import angle_metrics, train_test_metrics
    from l2bn.experiments.evaluation import ANGLE_METRICS, angle_row

    g = torch.Generator().manual_seed(1)
    features = torch.randn(60, 8, generator=g, dtype=torch.float64)
    labels = torch.arange(60) % 3
    seen = labels != 2  # class 2 is in the test set only
    row = angle_row(features[seen], labels[seen], features, labels, 3)
    train = angle_metrics(features[seen], labels[seen], num_classes=3)
    assert row["intra_train"] == train["intra_angle"] and row["inter"] == train["inter_angle"]
    assert row["iir_train"] == train["iir"]
    assert row["intra_test"] is None and row["iir_test"] is None
    assert "[2] have no class center" in row["angles_undefined"]
    # Every class seen: the metrics of train_test_metrics, nothing undefined.
    full = angle_row(features, labels, features, labels, 3)
    assert full == train_test_metrics(features, labels, features, labels, 3)
    # Collapsed features: every metric None.
    zeros = torch.zeros_like(features)
    collapsed = angle_row(zeros, labels, zeros, labels, 3)
    assert all(collapsed[key] is None for key in ANGLE_METRICS) and collapsed["angles_undefined"]
