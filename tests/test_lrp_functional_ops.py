"""Functional ops in ``forward`` get the rule of their module form; ops without a rule are refused, grouped by type.

Reference for the whole-model checks: on a bias-free ReLU net, LRP-0 (ZeroRule on every Linear/Conv, Norm on
pooling and sums) times the logit is Input x Gradient (Captum's ``InputXGradient``), element by element, and the
relevance of a sample sums to 1. Tolerances (written down): float64; 1e-9 relative to the largest attribution for
the Input x Gradient equality, 1e-9 absolute for the sums (observed ~1e-15: rounding over ~100 layers). The
stabilizers are 1e-30: random bias-free nets have small logits (down to 1e-4 here), and an absolute stabilizer of
1e-12 would already absorb ~1e-6 of the relevance at the pooling, which is the stabilizer's job, not a leak.
"""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import InputXGradient
from torch import nn

from xai import LRP, UnsupportedModelError
from xai.lrp.composites import ByType, Composite, EpsilonGammaBox
from xai.lrp.rules import NormRule, PassRule, ZeroRule

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")

LRP0 = Composite(ByType((nn.Conv2d, nn.Linear), ZeroRule()), name="LRP0", stabilizer=1e-30)


class FunctionalNet(nn.Module):
    """conv -> F.relu -> pooling -> fc, bias-free, with the pooling written as ``pool`` says."""

    def __init__(self, pool: str = "adaptive_avg_pool2d"):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 5, bias=False)
        self.pool = pool

    def forward(self, x):
        x = F.relu(self.conv(x), inplace=self.pool == "mean")
        x = F.adaptive_avg_pool2d(x, 1) if self.pool == "adaptive_avg_pool2d" else x.mean((2, 3), keepdim=True)
        return self.fc(torch.flatten(x, 1))


def module_net(functional: FunctionalNet) -> nn.Module:
    return nn.Sequential(functional.conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), functional.fc)


@pytest.mark.parametrize("pool", ["adaptive_avg_pool2d", "mean"])
@pytest.mark.parametrize("composite", [LRP0, EpsilonGammaBox(low=-3.0, high=3.0)], ids=lambda c: c.name)
def test_functional_relu_and_pooling_get_the_rules_of_their_modules(pool, composite):
    torch.manual_seed(0)
    functional = FunctionalNet(pool).double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 2, 4])
    ours = LRP(functional, composite)(x, target)
    expected = LRP(module_net(functional), composite)(x, target)
    torch.testing.assert_close(ours.attribution, expected.attribution, rtol=1e-12, atol=1e-14)
    if composite is LRP0:  # routed by its gradient, the pooling would leak relevance onto inactive positions
        torch.testing.assert_close(ours.attribution.sum((1, 2, 3)), torch.ones(3, dtype=torch.float64),
                                   rtol=0, atol=1e-12)
        reference = InputXGradient(functional).attribute(x.clone().requires_grad_(True), target=target)
        logits = ours.output[torch.arange(3), target].reshape(3, 1, 1, 1)
        assert_relative_close(ours.attribution * logits, reference, 1e-9)


def assert_relative_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    scale = expected.abs().max()
    assert scale > 0
    assert (actual - expected).abs().max() <= rtol * scale


def bias_free(model: nn.Module) -> nn.Module:
    """Zero every bias and BatchNorm shift (BatchNorm is then a per-channel scale)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
            if isinstance(getattr(m, "bias", None), torch.Tensor):
                m.bias.zero_()
    return model


# the torchvision families the README lists as supported (VGG: no functional op but flatten, and compared with
# Zennit in test_lrp_composites.py; ResNet50 is ResNet18's family)
FAMILIES = ["resnet18", "alexnet", "squeezenet1_1", "mobilenet_v2", "densenet121", "googlenet",
            "shufflenet_v2_x0_5", "mnasnet0_5", "regnet_x_400mf"]


@pytest.mark.parametrize("name", FAMILIES)
def test_lrp0_on_bias_free_torchvision_families_is_input_x_gradient_and_conserves(name):
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    model = bias_free(getattr(torchvision.models, name)(weights=None, **kwargs)).double().eval()
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64)  # 2x2 before the final pooling (1x1 would not test it)
    explanation = LRP(model, LRP0)(x)  # the predicted class: its logit is > 0 (squeezenet ends in a ReLU)
    logit = explanation.output[0, explanation.target[0]]
    assert logit > 0
    torch.testing.assert_close(explanation.attribution.sum(), torch.tensor(1.0, dtype=torch.float64),
                               rtol=0, atol=1e-9)
    reference = InputXGradient(model).attribute(x.clone().requires_grad_(True), target=explanation.target)
    assert_relative_close(explanation.attribution * logit, reference, 1e-9)


class Odd(nn.Module):
    """An element-wise op LRP has no rule for (|x|), called in forward()."""

    def forward(self, x):
        return x.abs()


def odd_net() -> nn.Module:
    torch.manual_seed(3)
    layers = [nn.Linear(4, 4, bias=False)]
    for _ in range(5):
        layers += [Odd(), nn.Linear(4, 4, bias=False)]
    return nn.Sequential(*layers).double().eval()


def test_an_op_without_a_rule_is_refused_grouped_by_module_type_with_advice_that_works():
    model = odd_net()
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(UnsupportedModelError) as info:
        LRP(model, LRP0)(x)
    message = str(info.value)
    assert len(info.value.problems) == 5  # every module is listed in .problems ...
    assert "1 (Odd): calls abs on an activation" in info.value.problems[0]
    assert "Odd x5 (1, 3, 5 and 2 more): calls abs on an activation" in message  # ... on one line of the message
    assert message.count("calls abs") == 1
    assert "rules={ModuleType: rule}" in message and "method=gradient" in message
    by_type = LRP(model, LRP0, rules={Odd: NormRule(stabilizer=1e-30)})(x, target=1).attribution
    by_path = LRP(model, LRP0, rules={f"{i}": NormRule(stabilizer=1e-30) for i in (1, 3, 5, 7, 9)})(x, 1).attribution
    torch.testing.assert_close(by_type, by_path, rtol=0, atol=0)
    # NormRule on |x|: proportional to each input's share, so the bias-free net conserves relevance
    torch.testing.assert_close(by_type.sum(1), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)


class Block(nn.Module):
    """A container LRP cannot explain on its own: a LocalResponseNorm child and a product of two activations."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LocalResponseNorm(2)
        self.left = nn.Conv2d(2, 2, 1, bias=False)
        self.right = nn.Conv2d(2, 2, 1, bias=False)

    def forward(self, x):
        return self.left(self.norm(x)) * torch.tanh(self.right(x))


def test_a_user_rule_lifts_every_refusal_inside_the_module_it_is_given_to():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), Block(), nn.Flatten(),
                          nn.Linear(2 * 4 * 4, 3, bias=False)).double().eval()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(UnsupportedModelError, match=r"1.norm \(LocalResponseNorm\)"):
        LRP(model, LRP0)(x)
    with pytest.raises(UnsupportedModelError, match=r"1 \(Block\): multiplies two activations"):
        LRP(model, LRP0, rules={nn.LocalResponseNorm: PassRule()})(x)
    explanation = LRP(model, LRP0, rules={"1": NormRule(stabilizer=1e-30)})(x, target=0)
    # the block as a whole gets R_in = h * J^T (R / block(h)), by hand with autograd on the block's own map
    with torch.no_grad():
        hidden = model[0](x)
        block_out = model[1](hidden)
        logits = model[3](model[2](block_out))
    w = model[3].weight[0]
    r_block = (block_out.flatten(1) * w / logits[:, :1]).reshape(block_out.shape)
    h = hidden.clone().requires_grad_(True)
    (vjp,) = torch.autograd.grad(model[1](h), h, r_block / block_out)
    r_hidden = hidden * vjp
    x_grad = x.clone().requires_grad_(True)
    (vjp,) = torch.autograd.grad(model[0](x_grad), x_grad, r_hidden / hidden)
    assert_relative_close(explanation.attribution, x * vjp, 1e-10)
