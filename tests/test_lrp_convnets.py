"""LRP on today's convnets: ConvNeXt, EfficientNet(V2), MobileNetV3, RegNetY (torchvision) and timm's ConvNeXt,
EfficientNet, MobileNetV3, RegNetX, DenseNet (norm-act modules, LayerNorm2d, squeeze-excitation, GELU/SiLU/Hardswish).

* Conservation: biases and BatchNorm shifts zeroed, stabilizers 1e-30 (epsilon -> 0), the relevance of each sample
  sums to the output relevance 1 (tolerance 1e-8 absolute, float64; observed ~1e-15: rounding over ~100 layers;
  the stabilizers are tiny because random bias-free nets have logits down to 1e-14, next to which an absolute
  stabilizer of 1e-12 absorbs a visible share, which is its job, not a leak).
* timm's ``BatchNormAct2d`` equals Conv + BatchNorm2d + activation modules (merged the same way), 1e-12 relative.
* ``LayerNormRule`` and ``GateRule`` on single modules against the formulas written out by hand, 1e-10 relative.
* Gradient, SmoothGrad and IG on these models equal Captum's (1e-5 relative, as tests/test_gradient_methods.py).
"""
import copy

import pytest
import timm
import torch
import torchvision
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import Saliency
from captum.attr._utils.approximation_methods import approximation_parameters
from timm.layers import LayerNorm2d as TimmLayerNorm2d
from timm.layers.norm_act import BatchNormAct2d
from timm.models._efficientnet_blocks import SqueezeExcite
from torch import nn
from torchvision.models.convnext import LayerNorm2d
from torchvision.ops import SqueezeExcitation

from tests.test_lrp_models import assert_unchanged, snapshot
from xai import LRP, Gradient, IntegratedGradients, SmoothGrad
from xai.lrp.canonize import BATCH_NORM_TYPES
from xai.lrp.composites import ByType, Composite, EpsilonGammaBox, EpsilonPlus
from xai.lrp.model_check import trace
from xai.lrp.rules import GateRule, LayerNormRule, PassRule, ZeroRule, stabilize
from xai.gradient.smoothgrad import noise_sigma, smoothgrad_noise

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")

LRP0 = Composite(ByType((nn.Conv2d, nn.Linear), ZeroRule()), name="LRP0", stabilizer=1e-30)


def make(name: str) -> nn.Module:
    """"tv:<name>" (torchvision, weights=None) or "timm:<name>" (pretrained=False), eval mode."""
    source, model_name = name.split(":")
    if source == "timm":
        return timm.create_model(model_name, pretrained=False).eval()
    return getattr(torchvision.models, model_name)(weights=None).eval()


def bias_free(model: nn.Module) -> nn.Module:
    """Zero every bias (Linear, Conv, LayerNorm, BatchNorm) and every BatchNorm running mean."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BATCH_NORM_TYPES):
                m.running_mean.zero_()
            if isinstance(getattr(m, "bias", None), torch.Tensor):
                m.bias.zero_()
    return model


MODELS = ["tv:convnext_tiny", "tv:efficientnet_b0", "tv:efficientnet_v2_s", "tv:mobilenet_v3_small",
          "tv:regnet_y_400mf", "timm:convnext_atto", "timm:efficientnet_b0", "timm:mobilenetv3_small_050",
          "timm:regnetx_002", "timm:densenet121"]


@pytest.mark.parametrize("name", MODELS)
def test_epsilon_gamma_box_conserves_relevance_on_bias_free_modern_convnets(name):
    torch.manual_seed(0)
    model = bias_free(make(name)).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    composite = EpsilonGammaBox(low=-3.0, high=3.0, epsilon=1e-30, stabilizer=1e-30)
    sums = LRP(model, composite)(x, target=torch.tensor([3, 7])).attribution.sum(dim=(1, 2, 3))
    torch.testing.assert_close(sums, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", ["timm:efficientnet_b0", "timm:mobilenetv3_small_050", "timm:regnetx_002"])
def test_every_timm_norm_act_after_a_conv_is_merged(name):
    model = make(name)
    merged = trace(model, torch.randn(1, 3, 32, 32)).merged
    norm_acts = [path for path, m in model.named_modules() if isinstance(m, BatchNormAct2d)]
    assert sorted(merged.values()) == sorted(norm_acts)


def conv_norm_act(norm_act: bool) -> nn.Module:
    """conv -> BatchNorm + ReLU -> conv -> BatchNorm + SiLU -> pool -> fc, as timm norm-act modules or as
    separate modules; randomised BatchNorm statistics and affine parameters, so that merging matters."""
    torch.manual_seed(5)
    if norm_act:
        norms = [BatchNormAct2d(6, act_layer=nn.ReLU), BatchNormAct2d(6, act_layer=nn.SiLU)]
    else:
        norms = [nn.Sequential(nn.BatchNorm2d(6), nn.ReLU()), nn.Sequential(nn.BatchNorm2d(6), nn.SiLU())]
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), norms[0], nn.Conv2d(6, 6, 3, padding=1), norms[1],
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.double().eval()


def test_timm_batchnorm_act_is_merged_and_explained_as_batchnorm_plus_activation():
    timm_model, plain = conv_norm_act(True), conv_norm_act(False)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    assert trace(timm_model, x[:1]).merged == {"0": "1", "2": "3"}
    for composite in (EpsilonGammaBox(low=-3.0, high=3.0), EpsilonPlus()):
        expected = LRP(plain, composite)(x, target=1).attribution
        ours = LRP(timm_model, composite)(x, target=1).attribution
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-14)
    # a user rule replaces the module as a whole: nothing merged, the BatchNorm and its activation pass relevance
    composite = EpsilonGammaBox(low=-3.0, high=3.0)
    by_type = LRP(timm_model, composite, rules={BatchNormAct2d: PassRule()})(x, target=1).attribution
    by_path = LRP(timm_model, composite, rules={"1": PassRule(), "3": PassRule()})(x, target=1).attribution
    passed = LRP(plain, composite, rules={"1": PassRule(), "3": PassRule()})(x, target=1).attribution
    torch.testing.assert_close(by_type, passed, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(by_path, passed, rtol=1e-12, atol=1e-14)
    assert (by_type - LRP(timm_model, composite)(x, target=1).attribution).abs().max() > 1e-3 * by_type.abs().max()


def hand_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, relevance: torch.Tensor,
                    stabilizer: float) -> torch.Tensor:
    """R_in = x * A^T (R / stab(A x + b)), A = diag(w / std) (I - 11^T / N), for each row of ``x`` (N features)."""
    n = x.shape[-1]
    centring = torch.eye(n, dtype=x.dtype) - 1.0 / n
    rows = []
    for xi, ri, wi, bi in zip(x, relevance, weight, bias):
        std = torch.sqrt(xi.var(unbiased=False) + eps)
        a = torch.diag(wi / std) @ centring
        y = a @ xi + bi
        rows.append(xi * (a.T @ (ri / stabilize(y, stabilizer))))
    return torch.stack(rows)


def test_layer_norm_rule_on_single_modules_equals_the_formula():
    torch.manual_seed(6)
    rule = LayerNormRule(stabilizer=1e-6)
    # nn.LayerNorm over the last dimension
    norm = nn.LayerNorm(5).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x, relevance = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    expected = hand_layer_norm(x, norm.weight.expand(3, 5), norm.bias.expand(3, 5), norm.eps, relevance, 1e-6)
    torch.testing.assert_close(rule.propagate(norm, x, relevance), expected, rtol=1e-10, atol=1e-12)
    # channel LayerNorm of ConvNeXt (torchvision's and timm's LayerNorm2d): one row per pixel, over the channels
    x, relevance = torch.randn(2, 4, 3, 3, dtype=torch.float64), torch.randn(2, 4, 3, 3, dtype=torch.float64)

    def per_pixel(t):
        return t.permute(0, 2, 3, 1).reshape(-1, 4)

    for channel_norm in (LayerNorm2d(4).double(), TimmLayerNorm2d(4).double()):
        with torch.no_grad():
            channel_norm.weight.uniform_(0.5, 1.5)
            channel_norm.bias.uniform_(-0.5, 0.5)
        w, b = channel_norm.weight.expand(18, 4), channel_norm.bias.expand(18, 4)
        expected = hand_layer_norm(per_pixel(x), w, b, channel_norm.eps, per_pixel(relevance), 1e-6)
        ours = per_pixel(rule.propagate(channel_norm, x, relevance))
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    # GroupNorm(2, 4): one row per sample and group of 2 channels x 9 pixels, affine per channel
    group_norm = nn.GroupNorm(2, 4).double()
    with torch.no_grad():
        group_norm.weight.uniform_(0.5, 1.5)
        group_norm.bias.uniform_(-0.5, 0.5)
    w = group_norm.weight.repeat_interleave(9).reshape(2, 18).repeat(2, 1)
    b = group_norm.bias.repeat_interleave(9).reshape(2, 18).repeat(2, 1)
    expected = hand_layer_norm(x.reshape(4, 18), w, b, group_norm.eps, relevance.reshape(4, 18), 1e-6)
    ours = rule.propagate(group_norm, x, relevance).reshape(4, 18)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_functional_layer_norm_gets_the_layer_norm_rule():
    """A LayerNorm called as F.layer_norm in forward() is explained as the nn.LayerNorm module (one-hot R)."""

    class Functional(nn.Module):
        def __init__(self, norm):
            super().__init__()
            self.affine = (norm.weight, norm.bias)  # not its own parameters: a layer with them needs a rule

        def forward(self, x):
            return nn.functional.layer_norm(x, (5,), *self.affine, 1e-5)

    torch.manual_seed(8)
    norm = nn.LayerNorm(5).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 5, dtype=torch.float64)
    one_hot = torch.zeros(3, 5, dtype=torch.float64)
    one_hot[:, 2] = 1.0
    expected = hand_layer_norm(x, norm.weight.expand(3, 5), norm.bias.expand(3, 5), 1e-5, one_hot, 1e-6)
    for model in (nn.Sequential(norm), Functional(norm)):
        torch.testing.assert_close(LRP(model)(x, target=2).attribution, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make_se", [lambda: SqueezeExcitation(6, 3), lambda: SqueezeExcite(6, rd_ratio=0.5)],
                         ids=["torchvision", "timm"])
def test_squeeze_excitation_gate_is_a_constant(make_se):
    """conv -> SE -> fc with LRP-0: the gate g = SE's sigmoid output scales its input x1 and gets no relevance,
    so R_x1 = R_(g x1) = g x1 W_t / logit_t, and R_x = x conv^T (R_x1 / x1) (conv: bias-free, fc: bias-free)."""
    torch.manual_seed(9)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), make_se(), nn.Flatten(),
                          nn.Linear(6 * 4 * 4, 3, bias=False)).double().eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    explanation = LRP(model, LRP0)(x, target=2)
    with torch.no_grad():
        x1 = model[0](x)
        gated = model[1](x1)
        logit = model[3](gated.flatten(1))[:, 2:3]
    relevance_x1 = (gated.flatten(1) * model[3].weight[2] / logit).reshape(x1.shape)
    x_grad = x.clone().requires_grad_(True)
    (vjp,) = torch.autograd.grad(model[0](x_grad), x_grad, relevance_x1 / x1)
    scale = (x * vjp).abs().max()
    assert (explanation.attribution - x * vjp).abs().max() <= 1e-10 * scale
    torch.testing.assert_close(explanation.attribution.sum((1, 2, 3)), torch.ones(2, dtype=torch.float64),
                               rtol=0, atol=1e-12)  # the SE's own biases do not matter: the gate is a constant
    assert GateRule().split(torch.ones(2, 3), torch.Size([2, 3]), torch.Size([2, 1])) [1] is None


def test_model_is_unchanged_after_analysis_and_after_an_error():
    model = make("timm:efficientnet_b0").train()  # norm-act modules, SE gates, a functional mean
    model.conv_head.weight.requires_grad_(False)
    before = snapshot(model)
    analyzer = LRP(model, EpsilonGammaBox(low=-3.0, high=3.0))
    analyzer(torch.randn(1, 3, 32, 32))
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match="out of range"):
        analyzer(torch.randn(1, 3, 32, 32), target=5000)
    assert_unchanged(model, before)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max()
    assert scale > 0
    return float((actual - expected).abs().max() / scale)


@pytest.mark.parametrize("name", ["tv:mobilenet_v3_small", "timm:convnext_atto"])
def test_gradient_methods_equal_captum_on_modern_convnets(name):
    """Gradient = Captum's Saliency; SmoothGrad = the mean of Captum's gradients over the same noise; IG = Captum's
    IG on Captum's points (see tests/test_gradient_methods.py for why its points); 1e-5 relative."""
    torch.manual_seed(10)
    model = copy.deepcopy(make(name)).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([1, 5])
    saliency = Saliency(model)
    assert relative_error(Gradient(model)(x, target).attribution,
                          saliency.attribute(x, target=target, abs=False)) <= 1e-5
    noise = smoothgrad_noise(x.shape[1:], 3, 7, dtype=x.dtype)
    sigma = noise_sigma(x, 0.1)
    expected = torch.stack([saliency.attribute(x + sigma * noise[s], target=target, abs=False)
                            for s in range(3)]).mean(0)
    assert relative_error(SmoothGrad(model, 3, 0.1, seed=7)(x, target).attribution, expected) <= 1e-5
    ig = IntegratedGradients(model, steps=6, scheme="riemann_right")
    ig.points = torch.tensor(approximation_parameters("riemann_right")[1](6), dtype=torch.float64)
    expected = CaptumIG(model).attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=6,
                                         method="riemann_right")
    assert relative_error(ig(x, target).attribution, expected) <= 1e-5
