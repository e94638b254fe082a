"""Every preset composite equals Zennit's composite of the same name, with the canonizers Zennit documents.

Models: the bundled DigitsCNN (BatchNorm), torchvision VGG16, VGG11-BN and ResNet18 with random weights and
randomised BatchNorm statistics (so that merging matters). Tolerance (written down): float64,
``max |ours - zennit| <= 1e-5 * max |zennit|``.

Two corrections on the Zennit side, both for bugs of zennit 0.5.1 that 1.0.0 fixed:

* its ``MergeBatchNorm`` leaves the BatchNorm's ``eps`` in place after merging, so the "identity" BatchNorm
  divides by sqrt(1 + eps) (relative error ~1e-3 on VGG11-BN); ``ExactMergeBatchNorm`` sets eps to 0 while merged,
  as zennit 1.0.0 does;
* it fails to restore bias-free layers after merging, so bias-free layers get zero biases on Zennit's copy.
"""
import copy

import pytest
import torch
import zennit.composites as zc
from torch import nn
from torchvision.models import vgg11_bn, vgg16
from zennit.attribution import Gradient as ZennitGradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

import xai.lrp.composites as xc
from xai import LRP
from tests.conftest import randomise_batchnorm

RTOL = 1e-5
COMPOSITES = {
    "EpsilonGammaBox": (xc.EpsilonGammaBox, lambda canonizers: zc.EpsilonGammaBox(-3.0, 3.0, canonizers=canonizers)),
    "EpsilonPlus": (xc.EpsilonPlus, lambda canonizers: zc.EpsilonPlus(canonizers=canonizers)),
    "EpsilonPlusFlat": (xc.EpsilonPlusFlat, lambda canonizers: zc.EpsilonPlusFlat(canonizers=canonizers)),
    "EpsilonAlpha2Beta1": (xc.EpsilonAlpha2Beta1, lambda canonizers: zc.EpsilonAlpha2Beta1(canonizers=canonizers)),
    "EpsilonAlpha2Beta1Flat": (xc.EpsilonAlpha2Beta1Flat,
                               lambda canonizers: zc.EpsilonAlpha2Beta1Flat(canonizers=canonizers)),
}


class ExactMergeBatchNorm(SequentialMergeBatchNorm):
    """zennit 0.5.1's merge plus eps = 0 on the merged BatchNorm (what zennit 1.0.0 does)."""

    def register(self, linears, batch_norm):
        self.original_eps = batch_norm.eps
        super().register(linears, batch_norm)
        batch_norm.eps = 0.0

    def remove(self):
        super().remove()
        self.batch_norm.eps = self.original_eps


def with_zero_biases(model: nn.Module) -> nn.Module:
    if all(m.bias is not None for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))):
        return model
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is None:
            out = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            m.bias = nn.Parameter(torch.zeros(out, dtype=m.weight.dtype))
    return model


def assert_relative_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL) -> None:
    scale = expected.abs().max()
    assert scale > 0, "reference relevance is all zeros: the comparison would prove nothing"
    error = (actual - expected).abs().max()
    assert error <= rtol * scale, f"max abs error {error:.3e} > {rtol} * {scale:.3e}"


def random_torchvision(make, seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = make(weights=None)
    with torch.no_grad():
        randomise_batchnorm(model, torch.Generator().manual_seed(seed))
    return model.eval().double()


@pytest.fixture(scope="module")
def vgg16_f64():
    return random_torchvision(vgg16, 1)


@pytest.fixture(scope="module")
def vgg11_bn_f64():
    return random_torchvision(vgg11_bn, 2)


@pytest.fixture(params=["digits", "vgg16", "vgg11_bn", "resnet18"])
def case(request, digits_model_f64, digits_batch, resnet18_model_f64, resnet_input):
    """(float64 model, input, targets, Zennit canonizers); VGGs at 32x32 to keep the tests fast."""
    generator = torch.Generator().manual_seed(5)
    if request.param == "digits":
        return digits_model_f64, digits_batch[0][:3].double(), torch.tensor([0, 4, 9]), [ExactMergeBatchNorm()]
    if request.param == "resnet18":
        canonizers = [ExactMergeBatchNorm(), ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()]
        return resnet18_model_f64, resnet_input.double(), torch.tensor([3, 500]), canonizers
    model = request.getfixturevalue(f"{request.param}_f64")
    x = torch.randn(2, 3, 32, 32, generator=generator, dtype=torch.float64)
    return model, x, torch.tensor([1, 999]), [ExactMergeBatchNorm()]


@pytest.mark.parametrize("name", list(COMPOSITES))
def test_composite_equals_zennit(case, name):
    model, x, target, canonizers = case
    ours, theirs = COMPOSITES[name]
    one_hot = torch.eye(model(x[:1]).shape[1], dtype=torch.float64)[target]
    with ZennitGradient(with_zero_biases(model), theirs(canonizers)) as attributor:
        _, expected = attributor(x.clone().requires_grad_(True), one_hot)
    explanation = LRP(model, ours())(x, target)
    assert explanation.method == f"LRP({name})"
    assert torch.equal(explanation.target, target)
    assert_relative_close(explanation.attribution, expected)


def test_composites_map_layers_like_zennit(vgg11_bn_f64):
    """Spot checks of the layer maps (zennit.md section 3.3): first conv, other convs, dense, activations."""
    rules = xc.EpsilonGammaBox().rules_for(vgg11_bn_f64)
    assert type(rules["features.0"]).__name__ == "ZBoxRule"
    assert type(rules["features.4"]).__name__ == "GammaRule"
    assert type(rules["classifier.0"]).__name__ == "EpsilonRule"
    assert type(rules["features.2"]).__name__ == "PassRule"  # ReLU
    assert type(rules["avgpool"]).__name__ == "NormRule"
    assert "features.3" not in rules  # MaxPool: plain gradient, winner takes all
    flat = xc.EpsilonPlusFlat().rules_for(vgg11_bn_f64)
    assert type(flat["features.0"]).__name__ == "FlatRule"
    assert type(flat["features.4"]).__name__ == "ZPlusRule"
    mlp = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert type(xc.EpsilonGammaBox().rules_for(mlp)["0"]).__name__ == "EpsilonRule"  # ZBox only on a first conv
    assert type(xc.EpsilonPlusFlat().rules_for(mlp)["0"]).__name__ == "FlatRule"
