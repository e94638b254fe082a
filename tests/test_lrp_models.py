"""LRP on whole models: conservation, residual sums, model checks and errors, the untouched model, extensibility."""
import copy

import pytest
import torch
import torchvision
from captum.attr import InputXGradient
from torch import nn

import xai.lrp.composites as xc
from xai import LRP, UnsupportedModelError
from xai.lrp.composites import ByName, ByType, Composite, FirstLayer, IndexRange
from xai.lrp.model_check import trace
from xai.lrp.rules import EpsilonRule, FlatRule, GammaRule, LinearRule, NormRule, PassRule, ZeroRule, ZPlusRule, stabilize

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")


def bias_free_relu_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.ReLU(inplace=True)), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(32, 16, bias=False), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4, bias=False),
    ).double().eval()


class FunctionalResidual(nn.Module):
    """x + f(x) written with a functional + and with +=, as in user code and torchvision's ResNet."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(6, 6, bias=False)
        self.second = nn.Linear(6, 6, bias=False)
        self.relu = nn.ReLU()
        self.head = nn.Linear(6, 3, bias=False)

    def forward(self, x):
        out = self.relu(self.inner(x)) + x
        residual = self.second(out)
        residual += out
        return self.head(self.relu(residual))


def test_lrp0_conserves_relevance_on_a_bias_free_relu_net():
    model = bias_free_relu_cnn()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    composite = Composite(ByType((nn.Conv2d, nn.Linear), ZeroRule()), name="LRP0", stabilizer=1e-12)
    explanation = LRP(model, composite)(x, target=torch.tensor([0, 1, 3]))
    sums = explanation.attribution.sum(dim=(1, 2, 3))
    torch.testing.assert_close(sums, torch.ones(3, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    # LRP-0 on a bias-free ReLU net is Input x Gradient scaled to an output relevance of 1 (element by element)
    targets = torch.tensor([0, 1, 3])
    expected = InputXGradient(model).attribute(x.clone().requires_grad_(True), target=targets)
    logits = explanation.output[torch.arange(3), targets].reshape(3, 1, 1, 1)
    torch.testing.assert_close(explanation.attribution * logits, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("composite", [xc.EpsilonPlus(epsilon=1e-12, stabilizer=1e-12),
                                       xc.EpsilonAlpha2Beta1(epsilon=1e-12, stabilizer=1e-12)], ids=lambda c: c.name)
def test_preset_composites_conserve_relevance_on_a_bias_free_relu_net(composite):
    """With the stabilizers near 0 (they absorb a little relevance by design), nothing is lost or duplicated."""
    model = bias_free_relu_cnn()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    sums = LRP(model, composite)(x, target=2).attribution.sum(dim=(1, 2, 3))
    torch.testing.assert_close(sums, torch.ones(2, dtype=torch.float64), rtol=1e-8, atol=0)


class ConvOutputBesideItsBatchNorm(nn.Module):
    """A conv output read by its BatchNorm and, directly, by a residual sum: the BatchNorm cannot be merged."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 5, bias=False))
        with torch.no_grad():  # a pure per-channel scale: relevance is conserved through it
            self.bn.weight.uniform_(0.5, 2.0)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        c = self.conv(x)
        return self.head(torch.relu(self.bn(c) + c))


def test_a_layer_output_read_beside_its_batchnorm_is_not_merged_and_keeps_its_relevance():
    torch.manual_seed(2)
    model = ConvOutputBesideItsBatchNorm().double().eval()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    assert trace(model, x[:1]).merged == {}
    composite = Composite(ByType((nn.Conv2d, nn.Linear), ZeroRule()), name="LRP0", stabilizer=1e-12)
    sums = LRP(model, composite)(x, target=2).attribution.sum(dim=(1, 2, 3))
    torch.testing.assert_close(sums, torch.ones(2, dtype=torch.float64), rtol=1e-10, atol=1e-10)


def test_functional_residual_additions_split_relevance_instead_of_duplicating_it():
    torch.manual_seed(1)
    model = FunctionalResidual().double().eval()
    x = torch.rand(4, 6, dtype=torch.float64)
    composite = Composite(ByType(nn.Linear, ZeroRule()), name="LRP0", stabilizer=1e-12)
    sums = LRP(model, composite)(x, target=1).attribution.sum(dim=1)
    torch.testing.assert_close(sums, torch.ones(4, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    # the plain gradient through the two sums would give Input x Gradient, which is not conservative here
    plain = InputXGradient(model).attribute(x.clone().requires_grad_(True), target=1).sum(dim=1)
    assert (plain - 1).abs().min() > 0.05


def test_resnet_relevance_is_not_doubled_at_residual_additions(resnet18_model):
    model = copy.deepcopy(resnet18_model).double()
    with torch.no_grad():  # merged BatchNorm without a shift: no relevance is absorbed by biases
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.bias.zero_()
            if isinstance(m, nn.Linear):
                m.bias.zero_()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    sums = LRP(model, xc.EpsilonPlus())(x, target=7).attribution.sum(dim=(1, 2, 3))
    # ZPlus keeps every positive contribution; without proportional sums the 8 blocks would give about 2^8
    torch.testing.assert_close(sums, torch.ones(2, dtype=torch.float64), rtol=1e-3, atol=0)


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "eps": [getattr(m, "eps", None) for m in model.modules()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), f"{key} changed"
    for field in ("training", "requires_grad", "hooks", "inplace", "eps"):
        assert after[field] == before[field], f"{field} changed"


def test_model_is_unchanged_after_analysis_and_after_an_error(resnet18_model):
    model = copy.deepcopy(resnet18_model).train()  # training mode and requires_grad must come back as they were
    model.layer1[0].relu.inplace = True
    before = snapshot(model)
    x = torch.randn(1, 3, 32, 32)
    analyzer = LRP(model, xc.EpsilonGammaBox())
    analyzer(x)
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match="out of range"):  # raised after the LRP forward pass, hooks in place
        analyzer(x, target=5000)
    assert_unchanged(model, before)


def test_model_is_unchanged_after_an_error_inside_forward():
    class Failing(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True))
            self.head = nn.Linear(4, 2)
            self.fail = False

        def forward(self, x):
            x = self.body(x)
            if self.fail:
                raise RuntimeError("boom")
            return self.head(x)

    model = Failing()
    analyzer = LRP(model, xc.EpsilonPlus())
    analyzer(torch.randn(2, 4))  # traced and cached while working
    before = snapshot(model)
    model.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        analyzer(torch.randn(2, 4))
    assert_unchanged(model, before)


def test_bundled_model_float32_agrees_with_float64(digits_model, digits_model_f64, digits_batch):
    x = digits_batch[0]
    ours32 = LRP(digits_model, xc.EpsilonGammaBox(low=0.0, high=1.0))(x).attribution
    ours64 = LRP(digits_model_f64, xc.EpsilonGammaBox(low=0.0, high=1.0))(x.double()).attribution
    scale = ours64.abs().max()
    assert (ours32.double() - ours64).abs().max() <= 1e-3 * scale


def test_batch_equals_single_samples(digits_model_f64, digits_batch):
    x = digits_batch[0][:3].double()
    analyzer = LRP(digits_model_f64, xc.EpsilonAlpha2Beta1Flat())
    batch = analyzer(x, target=torch.tensor([1, 2, 3])).attribution
    for i in range(3):
        single = analyzer(x[i:i + 1], target=i + 1).attribution
        torch.testing.assert_close(batch[i:i + 1], single, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [torchvision.models.vgg11, torchvision.models.resnet50], ids=["vgg11", "resnet50"])
def test_torchvision_models_work_out_of_the_box(make):
    model = make(weights=None).eval()
    x = torch.randn(1, 3, 32, 32)
    explanation = LRP(model, xc.EpsilonPlusFlat())(x, target=3)
    assert explanation.attribution.shape == x.shape
    assert torch.isfinite(explanation.attribution).all()
    assert explanation.attribution.abs().sum() > 0


FAMILIES = ["alexnet", "squeezenet1_1", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "densenet121",
            "shufflenet_v2_x0_5", "regnet_x_400mf", "mnasnet0_5", "googlenet", "convnext_tiny", "vit_b_16", "swin_t"]


@pytest.mark.parametrize("name", FAMILIES)
def test_other_torchvision_families_work_or_raise_unsupported(name):
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    model = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    size = 224 if name == "vit_b_16" else 64
    x = torch.randn(1, 3, size, size)
    try:
        explanation = LRP(model, xc.EpsilonPlus())(x, target=0)
    except UnsupportedModelError as error:
        assert error.problems and all("(" in p and ")" in p for p in error.problems)
        return
    assert explanation.attribution.shape == x.shape
    assert torch.isfinite(explanation.attribution).all()


class TwoLayers(nn.Module):
    def __init__(self, middle: nn.Module, tail: nn.Module | None = None):
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.middle = middle
        self.last = tail if tail is not None else nn.Linear(4, 3)

    def forward(self, x):
        return self.last(self.middle(self.first(x)))


class SharedLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.shared(torch.relu(self.shared(x))))


class Product(nn.Module):
    """A product of two activations, neither a gate (the output of a sigmoid)."""

    def __init__(self):
        super().__init__()
        self.value = nn.Linear(4, 4)
        self.other = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.value(x) * torch.tanh(self.other(x)))


class FunctionalSoftmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)

    def forward(self, x):
        return torch.softmax(self.body(x), dim=1)


class Lstm(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.lstm(x[:, None])[0][:, -1])


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.attention(x[:, None], x[:, None], x[:, None])[0][:, 0])


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return x * self.scale


@pytest.mark.parametrize("model, expected", [
    (nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1)), ["1 (Softmax)", "strip_softmax"]),
    (nn.Sequential(nn.Linear(4, 3), nn.Sequential(nn.ReLU(), nn.LogSoftmax(dim=1))), ["1.1 (LogSoftmax)"]),
    (FunctionalSoftmax(), ["<model> (FunctionalSoftmax)", "functional softmax at the output"]),
    (Lstm(), ["lstm (LSTM)", "recurrent"]),
    (Attention(), ["attention (MultiheadAttention)"]),
    (SharedLinear(), ["shared (Linear)", "called 2 times"]),
    (Product(), ["<model> (Product)", "multiplies two activations"]),
    (TwoLayers(nn.LocalResponseNorm(2)), ["middle (LocalResponseNorm)"]),
    (TwoLayers(Scaled()), ["middle (Scaled)", "unknown layer with parameters"]),
    (TwoLayers(nn.Sequential(nn.ReLU()), nn.Sequential(Scaled(), nn.Linear(4, 2))), ["last.0 (Scaled)"]),
    (TwoLayers(nn.ReLU(), nn.Bilinear(4, 4, 2)), ["last (Bilinear)"]),
])
def test_unsupported_models_raise_before_relevance_is_computed(model, expected):
    with pytest.raises(UnsupportedModelError) as info:
        LRP(model, xc.EpsilonPlus())(torch.randn(2, 4))
    message = str(info.value)
    for text in expected:
        assert text in message
    assert "strip_softmax" in message and "rules=" in message  # says what to do


def test_static_problems_are_found_without_running_the_model():
    calls = []
    model = nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 4), nn.Linear(4, 2), nn.Softmax(dim=1))
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(UnsupportedModelError) as info:
        LRP(model, xc.EpsilonPlus())(torch.randn(2, 4))
    assert calls == []
    assert len(info.value.problems) == 2  # every offending module is named, not only the first


def test_a_layer_without_a_rule_or_with_a_wrong_rule_is_reported():
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    only_dense = Composite(ByType(nn.Linear, EpsilonRule()), name="OnlyDense")
    with pytest.raises(UnsupportedModelError, match=r"0 \(Conv1d\): has no rule"):
        LRP(model, only_dense)(torch.randn(2, 1, 4))
    with pytest.raises(UnsupportedModelError, match=r"1 \(ReLU\): ZPlusRule.* Linear and Conv layers only"):
        LRP(model, xc.EpsilonPlus(), rules={"1": ZPlusRule()})(torch.randn(2, 1, 4))


def test_a_custom_layer_with_a_rule_is_accepted():
    model = TwoLayers(nn.ReLU(), nn.Sequential(Scaled(), nn.Linear(4, 2)))
    explanation = LRP(model, xc.EpsilonPlus(), rules={"last.0": NormRule()})(torch.randn(2, 4))
    assert torch.isfinite(explanation.attribution).all()


# --- extensibility: the README's examples -------------------------------------------------------------------------

class ClassicGamma(LinearRule):
    """The textbook Gamma rule, as in ExplainableAI.jl's custom-rule tutorial."""

    def modify_parameters(self, param, name):
        return param + 0.25 * param.clamp(min=0)


class WideEpsilon(LinearRule):
    def modify_denominator(self, z):
        return stabilize(z, 0.1)


def test_custom_rules_by_overriding_hooks_equal_the_presets(digits_model_f64, digits_batch):
    """On a ReLU net (inputs >= 0, relevance only where z > 0) the textbook Gamma equals Zennit's generalised one."""
    x = digits_batch[0].double()

    def attribution(conv_rule, dense_rule):
        composite = Composite(ByType(nn.Conv2d, conv_rule), ByType(nn.Linear, dense_rule), name="Custom")
        return LRP(digits_model_f64, composite)(x, target=3).attribution

    torch.testing.assert_close(attribution(ClassicGamma(), WideEpsilon()),
                               attribution(GammaRule(gamma=0.25), EpsilonRule(epsilon=0.1)), rtol=1e-9, atol=1e-12)


def test_custom_composite_from_building_blocks():
    model = torchvision.models.vgg11(weights=None).eval()
    composite = Composite(
        FirstLayer(nn.Conv2d, FlatRule()),
        ByName("classifier.6", EpsilonRule(0.25)),
        IndexRange(1, 3, GammaRule(gamma=0.5)),
        ByType(nn.Conv2d, ZPlusRule()),
        ByType(nn.Linear, EpsilonRule()),
        name="Mine",
    )
    rules = composite.rules_for(model)
    assert isinstance(rules["features.0"], FlatRule)
    assert isinstance(rules["features.3"], GammaRule) and isinstance(rules["features.6"], GammaRule)
    assert isinstance(rules["features.8"], ZPlusRule)
    assert isinstance(rules["classifier.6"], EpsilonRule) and rules["classifier.6"].epsilon == 0.25
    assert isinstance(rules["classifier.0"], EpsilonRule) and rules["classifier.0"].epsilon == 1e-6
    assert isinstance(rules["features.1"], PassRule)
    explanation = LRP(model, composite)(torch.randn(1, 3, 32, 32), target=0)
    assert explanation.method == "LRP(Mine)"
    # the preset rebuilt from blocks gives the preset's attribution
    rebuilt = Composite(FirstLayer((nn.Conv2d, nn.Linear), FlatRule()), ByType(nn.Conv2d, ZPlusRule()),
                        ByType(nn.Linear, EpsilonRule()), name="Rebuilt")
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(LRP(model, rebuilt)(x, 5).attribution,
                               LRP(model, xc.EpsilonPlusFlat())(x, 5).attribution, rtol=0, atol=0)


def test_user_rules_take_precedence_over_the_composite(digits_model_f64, digits_batch):
    x = digits_batch[0][:2].double()
    by_path = LRP(digits_model_f64, xc.EpsilonPlus(), rules={"1.4": EpsilonRule(epsilon=10.0)})
    by_type = LRP(digits_model_f64, xc.EpsilonPlus(), rules={nn.Linear: EpsilonRule(epsilon=10.0)})
    plain = LRP(digits_model_f64, xc.EpsilonPlus())
    assert by_path.method == "LRP(EpsilonPlus+rules)"
    assert not torch.allclose(by_path(x, 1).attribution, plain(x, 1).attribution)
    assert not torch.allclose(by_type(x, 1).attribution, by_path(x, 1).attribution)


def test_default_lrp_is_epsilon_on_every_linear_layer(digits_model_f64, digits_batch):
    x = digits_batch[0][:2].double()
    explicit = Composite(ByType((nn.Conv2d, nn.Linear), EpsilonRule(epsilon=1e-6)), name="Explicit")
    expected = LRP(digits_model_f64, explicit)(x).attribution
    explanation = LRP(digits_model_f64)(x)
    assert explanation.method == "LRP(Epsilon)"
    torch.testing.assert_close(explanation.attribution, expected, rtol=0, atol=0)


def test_bad_arguments_are_rejected():
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(TypeError, match="Composite"):
        LRP(model, composite="EpsilonPlus")
    with pytest.raises(TypeError, match=r"rules\['0'\]"):
        LRP(model, rules={"0": "epsilon"})
    with pytest.raises(TypeError, match="entries"):
        Composite(EpsilonRule())
