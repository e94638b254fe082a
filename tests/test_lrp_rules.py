"""Every LRP rule on Linear and Conv layers equals Zennit's rule of the same name on the same layer.

Tolerance (written down): float64, ``max |ours - zennit| <= 1e-5 * max |zennit|`` (1e-5 relative to the
attribution's scale; element-wise relative error is meaningless for entries near zero). Layers with and without
bias, non-negative and mixed-sign inputs, and mixed-sign output relevance (so that Gamma's z < 0 branch and the
sign-split terms all contribute).
"""
import pytest
import torch
import zennit.rules as zr
from torch import nn

from xai import LRP
from xai.lrp.canonize import AffineLayer
from xai.lrp.composites import EpsilonGammaBox, EpsilonPlus
from xai.lrp.rules import (
    AlphaBetaRule, EpsilonRule, FlatRule, GammaRule, LayerOutput, NormRule, PassRule, WSquareRule, ZBoxRule,
    ZeroRule, ZPlusRule,
)

RTOL = 1e-5

RULES = {
    "Zero": (ZeroRule, lambda: zr.Epsilon(epsilon=0.0)),
    "Epsilon": (EpsilonRule, zr.Epsilon),
    "Epsilon0.25": (lambda: EpsilonRule(epsilon=0.25), lambda: zr.Epsilon(epsilon=0.25)),
    "Gamma": (GammaRule, zr.Gamma),
    "Gamma0.5": (lambda: GammaRule(gamma=0.5), lambda: zr.Gamma(gamma=0.5)),
    "WSquare": (WSquareRule, zr.WSquare),
    "Flat": (FlatRule, zr.Flat),
    "ZBox": (lambda: ZBoxRule(low=-3.0, high=3.0), lambda: zr.ZBox(low=-3.0, high=3.0)),
    "ZPlus": (ZPlusRule, zr.ZPlus),
    "AlphaBeta": (AlphaBetaRule, zr.AlphaBeta),
    "AlphaBeta1-0": (lambda: AlphaBetaRule(alpha=1.0, beta=0.0), lambda: zr.AlphaBeta(alpha=1.0, beta=0.0)),
}

LAYERS = {
    "linear": (lambda bias: nn.Linear(12, 7, bias=bias), (3, 12)),
    "conv2d": (lambda bias: nn.Conv2d(3, 5, 3, padding=1, bias=bias), (2, 3, 6, 6)),
    "conv2d-strided": (lambda bias: nn.Conv2d(4, 6, 3, stride=2, dilation=1, bias=bias), (2, 4, 9, 9)),
    "conv1d": (lambda bias: nn.Conv1d(3, 4, 5, padding=2, bias=bias), (2, 3, 10)),
}


def assert_relative_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL) -> None:
    scale = expected.abs().max()
    assert scale > 0, "reference relevance is all zeros: the comparison would prove nothing"
    error = (actual - expected).abs().max()
    assert error <= rtol * scale, f"max abs error {error:.3e} > {rtol} * {scale:.3e}"


def zennit_relevance(layer: nn.Module, rule, x: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    handles = rule.register(layer)
    try:
        x = x.clone().requires_grad_(True)
        (result,) = torch.autograd.grad(layer(x), x, relevance)
    finally:
        handles.remove()
    return result


def our_relevance(layer: nn.Module, rule, x: torch.Tensor, relevance: torch.Tensor,
                  rectified: bool = False) -> torch.Tensor:
    """The rule's backward step exactly as the engine calls it (``rectified``: a ReLU consumed the output)."""
    with torch.no_grad():
        z = layer(x)
    extra = None
    if rule.uses_output:
        extra = LayerOutput(z.relu() if rectified else z, rectified) if rule.rectified_output_suffices else z
    return rule.relevance(AffineLayer(layer), x, extra, relevance)


def make_case(layer_name: str, bias: bool, sign: str, seed: int = 0):
    torch.manual_seed(seed)
    make, shape = LAYERS[layer_name]
    layer = make(bias).double()
    if bias:
        nn.init.uniform_(layer.bias, -0.5, 0.5)
    x = torch.rand(shape, dtype=torch.float64) if sign == "positive" else torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        relevance = torch.randn_like(layer(x))
    return layer, x, relevance


@pytest.mark.parametrize("sign", ["positive", "mixed"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("rule_name", list(RULES))
def test_rule_equals_zennit(rule_name, layer_name, bias, sign):
    ours, theirs = RULES[rule_name]
    layer, x, relevance = make_case(layer_name, bias, sign)
    expected = zennit_relevance(layer, theirs(), x, relevance)
    assert_relative_close(our_relevance(layer, ours(), x, relevance), expected)


@pytest.mark.parametrize("relevance_on", ["z>0", "all"])
@pytest.mark.parametrize("sign", ["positive", "mixed"])
@pytest.mark.parametrize("layer_name", ["linear", "conv2d", "conv2d-strided"])
@pytest.mark.parametrize("rectified", [False, True], ids=["output", "relu-output"])
def test_gamma_paths_equal_zennit(rectified, layer_name, sign, relevance_on):
    """Gamma's shortcuts: relevance on z > 0 only (after a ReLU: one transpose), z_down from z_up and z, with z
    kept or (after a ReLU, which keeps only relu(z)) recomputed; also exact zeros of z (bias-free layer on zero
    inputs), where Zennit drops the relevance."""
    layer, x, relevance = make_case(layer_name, False, sign)
    x[0] = 0.0  # z == 0 exactly on the first sample
    with torch.no_grad():
        z = layer(x)
    if relevance_on == "z>0":
        relevance = relevance * (z > 0)
    expected = zennit_relevance(layer, zr.Gamma(), x, relevance)
    assert_relative_close(our_relevance(layer, GammaRule(), x, relevance, rectified), expected)


def test_zbox_with_per_channel_bounds_equals_zennit():
    layer, x, relevance = make_case("conv2d", True, "mixed")
    low = torch.tensor([-2.0, -1.0, -3.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    high = torch.tensor([2.0, 1.5, 2.5], dtype=torch.float64).reshape(1, 3, 1, 1)
    expected = zennit_relevance(layer, zr.ZBox(low=low, high=high), x, relevance)
    assert_relative_close(our_relevance(layer, ZBoxRule(low=low, high=high), x, relevance), expected)


@pytest.mark.parametrize("shape", [(1, 3, 6, 6), (2, 3, 1, 1)], ids=["per-pixel", "per-sample"])
def test_zbox_with_bounds_that_vary_over_positions_or_samples_equals_zennit(shape):
    layer, x, relevance = make_case("conv2d", True, "mixed")
    torch.manual_seed(5)
    low = -1.0 - torch.rand(shape, dtype=torch.float64)
    high = 1.0 + torch.rand(shape, dtype=torch.float64)
    expected = zennit_relevance(layer, zr.ZBox(low=low, high=high), x, relevance)
    assert_relative_close(our_relevance(layer, ZBoxRule(low=low, high=high), x, relevance), expected)


def test_pass_rule_equals_zennit_on_activation():
    torch.manual_seed(1)
    x = torch.randn(3, 8, dtype=torch.float64)
    relevance = torch.randn(3, 8, dtype=torch.float64)
    expected = zennit_relevance(nn.Tanh(), zr.Pass(), x, relevance)
    assert torch.equal(PassRule().propagate(nn.Tanh(), None, relevance), expected)


@pytest.mark.parametrize("rule_name", ["Epsilon", "Gamma", "ZPlus", "AlphaBeta", "ZBox", "Flat", "WSquare"])
def test_rule_through_the_analyzer_equals_zennit(rule_name):
    """The same rules wired by ``LRP`` (hooks, autograd, one-hot output relevance) on a conv layer."""
    ours, theirs = RULES[rule_name]
    layer, x, _ = make_case("conv2d", True, "mixed", seed=3)
    model = nn.Sequential(layer, nn.Flatten())
    target = torch.tensor([5, 40])
    one_hot = torch.zeros(2, 5 * 36, dtype=torch.float64)
    one_hot[torch.arange(2), target] = 1.0
    handles = theirs().register(layer)
    try:
        x_grad = x.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(model(x_grad), x_grad, one_hot)
    finally:
        handles.remove()
    result = LRP(model, rules={"0": ours()})(x, target)
    assert_relative_close(result.attribution, expected)


@pytest.mark.parametrize("make, message", [
    (lambda: ZBoxRule(low=1.0, high=1.0), "low < high"),
    (lambda: ZBoxRule(low=2.0, high=-2.0), "low < high"),
    (lambda: ZBoxRule(low=torch.tensor([0.0, 3.0]), high=torch.tensor([1.0, 2.0])), "low < high"),
    (lambda: AlphaBetaRule(alpha=2.0, beta=2.0), "alpha - beta == 1"),
    (lambda: AlphaBetaRule(alpha=1.5, beta=1.0), "alpha - beta == 1"),
    (lambda: AlphaBetaRule(alpha=-1.0, beta=-2.0), "AlphaBetaRule's alpha must be >= 0, got -1.0"),
    (lambda: AlphaBetaRule(alpha=0.0, beta=-1.0), "AlphaBetaRule's beta must be >= 0, got -1.0"),
    (lambda: EpsilonRule(epsilon=-1e-3), "EpsilonRule's epsilon must be >= 0, got -0.001"),
    (lambda: GammaRule(gamma=-0.25), "GammaRule's gamma must be >= 0"),
    (lambda: GammaRule(gamma=float("inf")), "GammaRule's gamma must be finite, got inf"),
    (lambda: GammaRule(stabilizer=float("nan")), "GammaRule's stabilizer must be finite, got nan"),
    (lambda: NormRule(-1), "NormRule's stabilizer must be >= 0, got -1"),
    (lambda: FlatRule(stabilizer=-1e-6), "FlatRule's stabilizer must be >= 0"),
    (lambda: ZBoxRule(low=float("nan"), high=1.0), "ZBoxRule's low must be finite, got nan"),
    (lambda: ZBoxRule(low=0.0, high=torch.tensor([1.0, float("inf")])), "ZBoxRule's high must be finite"),
    (lambda: EpsilonGammaBox(low=float("nan")), "ZBoxRule's low must be finite"),
    (lambda: EpsilonPlus(stabilizer=float("inf")), "stabilizer must be finite, got inf"),
])
def test_bad_rule_parameters_fail_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("make, message", [
    (lambda: EpsilonRule("abc"), "EpsilonRule's epsilon must be a number, got 'abc' \\(str\\)"),
    (lambda: GammaRule(gamma=True), "GammaRule's gamma must be a number, got True"),
    (lambda: ZBoxRule(low="low", high=1.0), "ZBoxRule's low must be a number or a tensor, got 'low'"),
])
def test_rule_parameters_of_the_wrong_type_fail_at_construction(make, message):
    with pytest.raises(TypeError, match=message):
        make()


def test_rule_defaults_follow_zennit():
    assert EpsilonRule().epsilon == 1e-6
    assert GammaRule().gamma == 0.25
    assert (AlphaBetaRule().alpha, AlphaBetaRule().beta) == (2.0, 1.0)
    for rule in (GammaRule(), ZPlusRule(), AlphaBetaRule(), WSquareRule(), FlatRule(), ZBoxRule(0.0, 1.0)):
        assert rule.stabilizer == 1e-6


def test_zero_rule_drops_relevance_where_the_denominator_is_exactly_zero():
    layer = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0], [1.0, 2.0]]))
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)  # z = [0, 3]
    relevance = torch.tensor([[5.0, 3.0]], dtype=torch.float64)
    result = our_relevance(layer, ZeroRule(), x, relevance)
    assert torch.isfinite(result).all()
    torch.testing.assert_close(result, torch.tensor([[1.0, 2.0]], dtype=torch.float64))


class _ReLUsInPlace(nn.Module):
    """A functional in-place ReLU (it gets the Pass rule of its module form) and a ReLU module (Pass rule); with
    ``as_modules`` the functional ReLU is a module too (``relu1``), which Zennit can see."""

    def __init__(self, as_modules: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)
        self.relu1 = nn.ReLU(inplace=True) if as_modules else None

    def forward(self, x):
        x = self.relu1(self.conv1(x)) if self.relu1 is not None else torch.nn.functional.relu(self.conv1(x), True)
        x = self.relu(self.conv2(x))
        return self.fc(self.conv3(x).flatten(1))


@pytest.mark.parametrize("conv_rules", [("Gamma", "Flat", "Flat"), ("ZPlus", "Flat", "Flat"),
                                        ("ZPlus", "Gamma", "Flat")], ids="-".join)
def test_in_place_relus_equal_zennit(conv_rules):
    """In-place ReLUs stay in place where no rule keeps their input (Gamma, ZPlus, Flat below them); the relevance
    must not change. A Flat layer above a ReLU puts relevance where it outputs 0, where a ReLU's gradient and its
    Pass rule differ: the functional ReLU must get the Pass rule, as Zennit's ReLU module does (Zennit cannot see a
    functional ReLU, so it runs on the same weights with the ReLU as a module)."""
    torch.manual_seed(7)
    model = _ReLUsInPlace().double().eval()
    as_modules = _ReLUsInPlace(as_modules=True).double().eval()
    as_modules.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    names = ["conv1", "conv2", "conv3"]
    ours = {name: RULES[rule][0]() for name, rule in zip(names, conv_rules)} | {"fc": EpsilonRule(), "relu": PassRule()}
    theirs = {name: RULES[rule][1]() for name, rule in zip(names, conv_rules)} | {"fc": zr.Epsilon(), "relu": zr.Pass(),
                                                                                 "relu1": zr.Pass()}
    handles = [theirs[name].register(getattr(as_modules, name)) for name in theirs]
    try:
        x_grad = x.clone().requires_grad_(True)
        output = as_modules(x_grad)
        (expected,) = torch.autograd.grad(output, x_grad, torch.eye(5, dtype=torch.float64)[[1, 3]])
    finally:
        for handle in handles:
            handle.remove()
    attribution = LRP(model, rules=ours)(x, torch.tensor([1, 3])).attribution
    assert_relative_close(attribution, expected)
