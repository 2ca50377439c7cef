"""l2bn.norms.placement: L2BN in selected layers of ResNet-56 (paper Table 4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from l2bn import is_l2_batch_norm
from l2bn.models import create_model
from l2bn.norms.placement import PLACEMENTS, apply_l2bn, placement_predicate

pytestmark = pytest.mark.usefixtures("one_thread")


def _resnet56() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet56", num_classes=100)


def _converted(model: nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if is_l2_batch_norm(m)}


def _plain(model: nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if type(m) is nn.BatchNorm2d}


def test_resnet56_has_55_batchnorms():
    assert len(_plain(_resnet56())) == 1 + 3 * 9 * 2


def test_none_converts_nothing():
    model = apply_l2bn(_resnet56(), "none")
    assert _converted(model) == set() and len(_plain(model)) == 55


def test_all_converts_every_batchnorm():
    model = apply_l2bn(_resnet56(), "all")
    assert len(_converted(model)) == 55 and _plain(model) == set()


def test_classifier_converts_only_the_bn_feeding_the_classification_layer():
    model = apply_l2bn(_resnet56(), "classifier")
    assert _converted(model) == {"layer3.8.norm2"}
    # it is the last norm executed before the classifier
    order: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, _NormBase) or name == "classifier":
            m.register_forward_hook(lambda mod, i, o, name=name: order.append(name))
    model(torch.randn(2, 3, 8, 8))
    assert order[-2:] == ["layer3.8.norm2", "classifier"]


def _norms_run_before_classifier(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The norms executed before ``model.classifier`` (names), in execution order."""
    order: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, _NormBase) or m is model.classifier:
            m.register_forward_pre_hook(lambda mod, i, name=name: order.append(name))
    with torch.no_grad():
        model.eval()(x)
    classifier = next(n for n, m in model.named_modules() if m is model.classifier)
    return order[: order.index(classifier)]


@pytest.mark.parametrize(
    ("name", "kwargs", "shape"),
    [
        ("asc_resnet17", {"base_filters": 2}, (2, 3, 4, 16)),
        ("fcnn", {"widths": (4, 4, 4)}, (2, 3, 16, 16)),
        ("fsfcnn", {"widths": (4, 4, 4, 4)}, (2, 3, 8, 32)),
    ],
)
def test_classifier_placement_skips_the_norms_after_the_classification_layer(name, kwargs, shape):
    # The acoustic models normalize their class maps after the classification layer (a 1x1
    # convolution): the last BatchNorm registered is one of those, not the one feeding it.
    torch.manual_seed(0)
    model = apply_l2bn(create_model(name, num_classes=4, **kwargs), "classifier")
    before = _norms_run_before_classifier(model, torch.randn(shape))
    assert _converted(model) == {before[-1]}


def test_stage1_converts_exactly_the_first_residual_stage():
    model = apply_l2bn(_resnet56(), "stage1")
    converted = _converted(model)
    assert len(converted) == 18 and all(n.startswith("layer1.") for n in converted)
    assert "norm1" in _plain(model)  # the stem's BN is outside the residual stages


def test_stage2_3_converts_exactly_the_last_two_residual_stages():
    model = apply_l2bn(_resnet56(), "stage2-3")
    converted = _converted(model)
    assert len(converted) == 36
    assert all(n.startswith(("layer2.", "layer3.")) for n in converted)
    assert not any(n.startswith("layer1.") for n in converted)


def test_stages_and_stem_partition_all_layers():
    stage1 = _converted(apply_l2bn(_resnet56(), "stage1"))
    stage23 = _converted(apply_l2bn(_resnet56(), "stage2-3"))
    everything = _converted(apply_l2bn(_resnet56(), "all"))
    assert stage1.isdisjoint(stage23)
    assert everything - stage1 - stage23 == {"norm1"}


def test_conversion_keeps_the_trained_state_and_changes_the_output():
    model = _resnet56()
    x = torch.randn(4, 3, 8, 8) * torch.tensor([0.1, 1, 10, 100]).view(4, 1, 1, 1)
    before = model(x).detach()
    weight = model.layer1[0].norm1.weight
    apply_l2bn(model, "stage1")
    assert model.layer1[0].norm1.weight is weight
    assert not torch.allclose(model(x), before, atol=1e-4)


def test_predicate_selects_by_qualified_name():
    model = _resnet56()
    predicate = placement_predicate(model, "stage1")
    assert predicate("layer1.0.norm1", model.layer1[0].norm1)
    assert not predicate("layer2.0.norm1", model.layer2[0].norm1)
    assert not predicate("norm1", model.norm1)


def test_unknown_placement_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown placement 'stage4'") as info:
        apply_l2bn(_resnet56(), "stage4")
    for where in PLACEMENTS:
        assert where in str(info.value)


def test_stage_placement_needs_residual_stages():
    vgg = create_model("vgg16", num_classes=10)
    with pytest.raises(ValueError, match="layer1"):
        apply_l2bn(vgg, "stage1")
    assert len(_converted(apply_l2bn(vgg, "classifier"))) == 1


@pytest.mark.parametrize("where", ["stage1", "stage2-3"])
def test_stage_placements_refuse_a_model_with_a_fourth_stage(where):
    # ImageNet ResNet-50 has layer1..layer4: 'stage2-3' left layer4 as BatchNorm silently.
    with torch.device("meta"):
        model = create_model("resnet50", num_classes=10)
    with pytest.raises(ValueError, match="also has layer4"):
        placement_predicate(model, where)
