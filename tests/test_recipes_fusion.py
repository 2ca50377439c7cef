"""Issue 13: no conv-BN folding path turns an L2BN layer into BatchNorm.

Folding is impossible for L2BN (the per-sample l2 norm depends on the convolution's output):
every path either leaves the model computing L2BN or refuses with an error that says why.
"""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import fusion

import l2bn
from l2bn.fusion import install_fusion_guards


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), l2bn.L2BatchNorm2d(4), nn.ReLU())
    x = torch.randn(8, 3, 6, 6)
    with torch.no_grad():
        model(x)  # running statistics
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    return model.eval()


def _input() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(4, 3, 6, 6) * torch.logspace(-1, 1, 4).view(-1, 1, 1, 1)


@pytest.mark.parametrize("where", ["fusion", "utils"])
def test_fuse_conv_bn_eval_refuses_l2bn(where):
    model = _model()
    fuse = fusion.fuse_conv_bn_eval if where == "fusion" else nn.utils.fuse_conv_bn_eval
    with pytest.raises(TypeError, match=r"cannot fold L2BatchNorm2d into a convolution.*l2 norm"):
        fuse(model[0], model[1])
    with pytest.raises(TypeError, match="cannot fold"):
        fuse(conv=model[0], bn=model[1])
    frozen = l2bn.freeze(copy.deepcopy(model))
    with pytest.raises(TypeError, match="cannot fold FrozenL2BatchNorm2d"):
        fuse(frozen[0], frozen[1])


def test_fuse_linear_bn_eval_refuses_l2bn():
    linear, norm = nn.Linear(3, 4).eval(), l2bn.L2BatchNorm1d(4).eval()
    with pytest.raises(TypeError, match="cannot fold L2BatchNorm1d into a linear layer"):
        fusion.fuse_linear_bn_eval(linear, norm)


def test_fusion_guard_leaves_batchnorm_folding_as_it_was():
    torch.manual_seed(2)
    conv, bn = nn.Conv2d(3, 4, 3).eval(), nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    fused = fusion.fuse_conv_bn_eval(conv, bn)
    x = _input()
    torch.testing.assert_close(fused(x), bn(conv(x)), rtol=1e-5, atol=1e-5)
    assert fusion.fuse_conv_bn_eval.__wrapped__ is not None
    install_fusion_guards()  # idempotent: still one wrapper
    assert not getattr(fusion.fuse_conv_bn_eval.__wrapped__, "_l2bn_guard", False)


def test_import_l2bn_alone_guards_the_folding_functions():
    # README: ``import l2bn`` wraps them; only a name bound *before* ``import l2bn`` keeps
    # the unwrapped function. So a name bound right after ``import l2bn``, before any layer
    # module was imported, must refuse an L2BN layer too.
    code = (
        "import sys, torch\n"
        "import l2bn\n"
        "assert 'l2bn.layers' not in sys.modules\n"
        "from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval\n"
        "from torch.nn.utils import fuse_conv_bn_eval as utils_fuse\n"
        "conv, norm = torch.nn.Conv2d(3, 4, 3).eval(), l2bn.L2BatchNorm2d(4).eval()\n"
        "for fuse in (fuse_conv_bn_eval, utils_fuse):\n"
        "    try:\n"
        "        fuse(conv, norm)\n"
        "    except TypeError as exc:\n"
        "        assert 'cannot fold' in str(exc), exc\n"
        "    else:\n"
        "        raise SystemExit('folded an L2BN layer')\n"
        "try:\n"
        "    fuse_linear_bn_eval(torch.nn.Linear(3, 4).eval(), l2bn.L2BatchNorm1d(4).eval())\n"
        "except TypeError as exc:\n"
        "    assert 'cannot fold' in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('folded an L2BN layer')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_fx_fuse_keeps_l2bn():
    from torch.fx.experimental.optimization import fuse

    model = _model()
    x = _input()
    before = model(x)
    fused = fuse(model)
    torch.testing.assert_close(fused(x), before)
    # symbolic_trace records the L2BN layer as a call of the module (l2bn.fx_leaf), whose
    # type fuse's Conv-BatchNorm pattern does not match: still there, still L2BN.
    modules = dict(fused.named_modules())
    called = [modules[n.target] for n in fused.graph.nodes if n.op == "call_module"]
    assert any(isinstance(m, l2bn.L2BatchNorm2d) for m in called), fused.graph
    frozen = l2bn.freeze(copy.deepcopy(model))
    torch.testing.assert_close(fuse(frozen)(x), before)


def test_fuse_modules_refuses_l2bn():
    from torch.ao.quantization import fuse_modules

    model = _model()
    with pytest.raises((AssertionError, NotImplementedError), match="L2BatchNorm2d"):
        fuse_modules(model, [["0", "1"]])
    with pytest.raises((AssertionError, NotImplementedError), match="L2BatchNorm2d"):
        fuse_modules(model, [["0", "1", "2"]])
    x = _input()
    torch.testing.assert_close(model(x), _model()(x))  # untouched


PRENORMS = ["lnbn", "inbn", "pnbn"]


def _prenorm_model(name: str) -> tuple[nn.Sequential, torch.Tensor]:
    from l2bn.norms import create_norm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), create_norm(name, 4), nn.ReLU())
    with torch.no_grad():
        model(torch.randn(8, 3, 6, 6))  # running statistics
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    return model.eval(), _input()


@pytest.mark.parametrize("name", PRENORMS)
def test_fusion_refuses_prenormalized_batchnorm(name):
    """LNBN / INBN / PNBN are BatchNorm2d subclasses: folding one would drop its per-sample
    pre-normalization. Every path refuses it or leaves the model computing it."""
    model, x = _prenorm_model(name)
    before = model(x)
    cls = type(model[1]).__name__
    for fuse in (fusion.fuse_conv_bn_eval, nn.utils.fuse_conv_bn_eval):
        with pytest.raises(TypeError, match=rf"cannot fold {cls} into a convolution.*each sample"):
            fuse(model[0], model[1])
        with pytest.raises(TypeError, match="cannot fold"):
            fuse(conv=model[0], bn=model[1])
    norm1d = type("PreNorm1d", (nn.BatchNorm1d,), {"l2bn_prenorm": "a test normalization"})(4)
    with pytest.raises(TypeError, match="cannot fold PreNorm1d into a linear layer"):
        fusion.fuse_linear_bn_eval(nn.Linear(3, 4).eval(), norm1d.eval())
    assert l2bn.fusion.fold_refusal(model[1]) is not None
    assert l2bn.fusion.fold_refusal(nn.BatchNorm2d(4)) is None

    from torch.ao.quantization import fuse_modules
    from torch.fx.experimental.optimization import fuse as fx_fuse

    for group in (["0", "1"], ["0", "1", "2"]):
        try:
            fused = fuse_modules(copy.deepcopy(model), [group])
        except (AssertionError, NotImplementedError, TypeError) as error:
            assert cls in str(error)
        else:
            torch.testing.assert_close(fused(x), before)
    try:
        fused = fx_fuse(copy.deepcopy(model))
    except Exception as error:
        assert "fold" in str(error) or "trace" in type(error).__name__.lower()
    else:
        torch.testing.assert_close(fused(x), before)
    torch.testing.assert_close(model(x), before)  # untouched


class _RepBlock(nn.Module):
    """A RepVGG-style block as model code writes it: ``switch_to_deploy`` folds its norm
    into the convolution by reading the norm's tensors, with no class check."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) if hasattr(self, "bn") else self.conv(x)

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        std = (self.bn.running_var + self.bn.eps).sqrt()
        conv = nn.Conv2d(3, 4, 3)
        conv.weight.copy_(self.conv.weight * (self.bn.weight / std).view(-1, 1, 1, 1))
        conv.bias.copy_(self.bn.bias - self.bn.running_mean * self.bn.weight / std)
        self.conv = conv
        del self.bn


def _rep_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(_RepBlock(), nn.ReLU())
    model(torch.randn(8, 3, 6, 6) * torch.logspace(-1, 1, 8).view(-1, 1, 1, 1))
    with torch.no_grad():
        model[0].bn.weight.uniform_(0.5, 1.5)
        model[0].bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


def test_model_code_reparameterization_refuses_converted_l2bn():
    # Without the refusal, switch_to_deploy folded the L2BN layer as BatchNorm: the deployed
    # model computed BatchNorm (max difference 3.1 times the L2BN output's largest value).
    x = _input()
    model = l2bn.convert_bn_to_l2bn(_rep_model())
    expected = model(x)
    for copied in (model, copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        with pytest.raises(
            TypeError,
            match=r"_RepBlock '0'\.switch_to_deploy\(\) would fold the L2BatchNorm2d layer "
            r"'bn'.*l2 norm.*convert_l2bn_to_bn",
        ):
            copied[0].switch_to_deploy()
        torch.testing.assert_close(copied(x), expected)  # untouched
    # frozen and synchronized L2BN layers cannot be folded either
    frozen = l2bn.freeze(copy.deepcopy(model))
    with pytest.raises(TypeError, match="FrozenL2BatchNorm2d layer 'bn'"):
        frozen[0].switch_to_deploy()
    synced = l2bn.convert_sync_l2batchnorm(copy.deepcopy(model))
    with pytest.raises(TypeError, match="SyncL2BatchNorm layer 'bn'"):
        synced[0].switch_to_deploy()
    # excluded by the predicate: still BatchNorm, still foldable
    kept = l2bn.convert_bn_to_l2bn(_rep_model(), lambda name, m: False)
    assert "switch_to_deploy" not in kept[0].__dict__
    # converted back: the method is the class's again, and folds BatchNorm exactly
    back = l2bn.convert_l2bn_to_bn(model)
    assert "switch_to_deploy" not in back[0].__dict__
    bn_out = back(x)
    back[0].switch_to_deploy()
    torch.testing.assert_close(back(x), bn_out, rtol=1e-5, atol=1e-5)


def test_timm_reparameterize_model_refuses_converted_l2bn():
    # timm's reparameterize_model calls fuse / reparameterize on every block that has one;
    # RepViT's ConvNorm.fuse read the L2BN layer's tensors as BatchNorm's and returned a
    # Conv2d computing BatchNorm, silently; RepVGG's reparameterize failed with a bare
    # AssertionError.
    from _timm import import_timm

    timm = import_timm()
    from timm.models.byobnet import RepVggBlock
    from timm.models.repvit import ConvNorm
    from timm.utils.model import reparameterize_model

    torch.manual_seed(0)
    x = _input()
    for block, method, layer in (
        (ConvNorm(3, 4, 3), "fuse", "'bn'"),
        (RepVggBlock(3, 3), "reparameterize", "'identity'"),
    ):
        model = nn.Sequential(block, nn.ReLU())
        model(x)
        bn_out = model.eval()(x)
        model = l2bn.convert_bn_to_l2bn(model)
        with pytest.raises(
            TypeError, match=rf"{type(block).__name__} '0'\.{method}\(\) would fold .* {layer}"
        ):
            reparameterize_model(model)
        with pytest.raises(TypeError, match="would fold"):
            timm.models.reparameterize_model(model, inplace=True)
        assert l2bn.is_l2bn_layer(dict(model.named_modules())["0." + layer.strip("'")])
        back = reparameterize_model(l2bn.convert_l2bn_to_bn(model))
        assert not any(isinstance(m, nn.BatchNorm2d) for m in back.modules())
        torch.testing.assert_close(back(x), bn_out, rtol=1e-4, atol=1e-4)
