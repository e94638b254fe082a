"""DeepLIFT and DeepLIFTShap equal Captum's DeepLift / DeepLiftShap; GradientSHAP and ExpectedGradients equal Captum's
GradientShap fed our random draws.

All comparisons in float64 to 1e-5 relative (max |ours - Captum| <= 1e-5 x max |Captum|): the same difference
quotients, only summed in another order (rounding ~1e-15). Captum 0.9's DeepLift has three bugs (see the
``xai.gradient.deeplift`` docstring): a module used twice fails, adjacent hooked modules (ReLU then MaxPool) use a stale
gradient, and MaxPool's fallback uses the batch's first sample. Captum is therefore given an equivalent model
(one ReLU per use, a copy between ReLU and MaxPool) and one sample per call on the models with MaxPool; on a
MaxPool-free net with all six of Captum's activations it runs batched as it is.
"""
import copy
import types

import numpy as np
import pytest
import torch
from captum.attr import DeepLift as CaptumDeepLift
from captum.attr import DeepLiftShap as CaptumDeepLiftShap
from captum.attr import GradientShap as CaptumGradientShap
from captum.attr._core.noise_tunnel import NoiseTunnel
from torch import nn
from torchvision.models.resnet import BasicBlock

from xai import DeepLIFT, DeepLIFTShap, ExpectedGradients, GradientSHAP, UnsupportedModelError
from xai.gradient.smoothgrad import smoothgrad_noise


def assert_relative_close(ours, reference, rtol=1e-5):
    error = (ours - reference).abs().max().item()
    scale = reference.abs().max().item()
    assert scale > 0
    assert error <= rtol * scale, f"max abs error {error:.3e} > {rtol} * {scale:.3e}"


class Copy(nn.Module):
    """A new tensor between two hooked modules, so that Captum's tensor hooks do not share one (issue 1104)."""

    def forward(self, x):
        return x.clone()


def _basic_block_forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    return self.relu_out(self.bn2(self.conv2(out)) + identity)


def captum_equivalent(model: nn.Module) -> nn.Module:
    """The same function, with one ReLU per use in each BasicBlock and a copy in front of each MaxPool."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        if isinstance(module, BasicBlock):
            module.relu_out = nn.ReLU()
            module.forward = types.MethodType(_basic_block_forward, module)
        for name, child in list(module.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(module, name, nn.Sequential(Copy(), child))
    return model


def captum_deeplift_per_sample(model, x, baseline, target):
    equivalent = captum_equivalent(model)
    return torch.cat([CaptumDeepLift(equivalent).attribute(x[i:i + 1], baselines=baseline[i:i + 1],
                                                           target=target[i:i + 1]) for i in range(len(x))])


def target_difference(model, x, baseline, target):
    with torch.no_grad():
        return (model(x) - model(baseline)).gather(1, target[:, None])[:, 0]


@pytest.fixture(scope="module")
def six_activation_net():
    """No MaxPool: Captum runs batched and unmodified. Captum's six rescaled activations, AvgPool and BatchNorm."""
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ELU(), nn.AvgPool2d(2),
        nn.Conv2d(8, 8, 3), nn.LeakyReLU(0.1), nn.Conv2d(8, 8, 3), nn.Sigmoid(), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 20), nn.Tanh(), nn.Linear(20, 20), nn.Softplus(), nn.Linear(20, 5))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 1.5)
    return net.double().eval()


@pytest.fixture(scope="module")
def small_input():
    generator = torch.Generator().manual_seed(2)
    return (torch.randn(4, 3, 20, 20, generator=generator, dtype=torch.float64),
            torch.randn(3, 3, 20, 20, generator=generator, dtype=torch.float64))


@pytest.fixture(params=["digits", "resnet18"])
def case(request, digits_model_f64, digits_batch, resnet18_model_f64, resnet_input):
    if request.param == "digits":
        x = digits_batch[0][:3].double()
        return digits_model_f64, x, torch.full_like(x, 0.25)
    x = resnet_input.double()
    return resnet18_model_f64, x, 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5),
                                                    dtype=torch.float64)


# --- DeepLIFT -----------------------------------------------------------------------------------------------


def test_deeplift_equals_captum_batched_on_six_activations(six_activation_net, small_input):
    x, baselines = small_input
    ours = DeepLIFT(six_activation_net, baseline=baselines[0], batch_size=3)(x, target=2)
    reference = CaptumDeepLift(six_activation_net).attribute(x, baselines=baselines[0].expand_as(x), target=2)
    assert_relative_close(ours.attribution, reference)


@pytest.mark.parametrize("baseline_kind", ["zeros", "tensor"])
def test_deeplift_equals_captum(case, baseline_kind):
    model, x, baseline = case
    if baseline_kind == "zeros":
        ours = DeepLIFT(model)(x)
        baseline = torch.zeros_like(x)
    else:
        ours = DeepLIFT(model, baseline=baseline)(x)
    reference = captum_deeplift_per_sample(model, x, baseline, ours.target)
    assert_relative_close(ours.attribution, reference)


def test_deeplift_sums_to_delta_on_relu_nets(digits_model_f64, digits_batch, resnet18_model_f64, resnet_input):
    # digits: MaxPool 2x2 / stride 2 has no overlapping windows; ResNet's 3x3 / stride 2 stem needs sum_overlaps
    for model, x, analyzer in ((digits_model_f64, digits_batch[0].double(), DeepLIFT(digits_model_f64)),
                               (resnet18_model_f64, resnet_input.double(),
                                DeepLIFT(resnet18_model_f64, sum_overlaps=True))):
        expl = analyzer(x)
        delta = target_difference(model, x, torch.zeros_like(x), expl.target)
        assert delta.abs().min() > 1e-3
        assert_relative_close(expl.attribution.flatten(1).sum(1), delta, rtol=1e-6)


def test_captum_maxpool_rule_breaks_summation_on_overlapping_windows(resnet18_model_f64, resnet_input):
    x = resnet_input.double()
    expl = DeepLIFT(resnet18_model_f64)(x)  # Captum's max_unpool keeps one share per input picked twice
    delta = target_difference(resnet18_model_f64, x, torch.zeros_like(x), expl.target)
    assert ((expl.attribution.flatten(1).sum(1) - delta).abs() > 1e-3 * delta.abs()).all()


def test_sum_overlaps_changes_nothing_without_overlapping_windows(digits_model_f64, digits_batch):
    x = digits_batch[0].double()
    assert_relative_close(DeepLIFT(digits_model_f64, sum_overlaps=True)(x).attribution,
                          DeepLIFT(digits_model_f64)(x).attribution, rtol=1e-12)


def test_rescale_of_activations_captum_does_not_rescale_sums_to_delta():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 16), nn.SiLU(), nn.Linear(16, 16),
                        nn.Hardtanh(-0.5, 0.5), nn.Linear(16, 16), nn.Mish(), nn.Linear(16, 3)).double().eval()
    x = torch.randn(5, 12, dtype=torch.float64)
    baseline = torch.randn(12, dtype=torch.float64)
    expl = DeepLIFT(net, baseline=baseline)(x, target=1)
    delta = target_difference(net, x, baseline.expand_as(x), expl.target)
    assert_relative_close(expl.attribution.sum(1), delta, rtol=1e-6)


def test_deeplift_shared_relu_equals_unshared_copy(resnet18_model_f64, resnet_input):
    x = resnet_input.double()
    shared = DeepLIFT(resnet18_model_f64)(x, target=3).attribution
    unshared = DeepLIFT(captum_equivalent(resnet18_model_f64))(x, target=3).attribution
    assert_relative_close(shared, unshared, rtol=1e-12)


def test_deeplift_does_not_depend_on_batch_size_or_batch(digits_model_f64, digits_batch):
    x = digits_batch[0].double()
    whole = DeepLIFT(digits_model_f64, baseline=0.1, batch_size=32)(x)
    chunked = DeepLIFT(digits_model_f64, baseline=0.1, batch_size=4)(x, target=whole.target)
    assert torch.equal(whole.target, chunked.target)
    assert_relative_close(chunked.attribution, whole.attribution, rtol=1e-12)
    assert torch.allclose(whole.output, digits_model_f64(x).detach(), rtol=1e-12, atol=0)


def count_forwards(model):
    calls = []
    model.register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].shape[0]))
    return calls


def test_reused_analyzer_runs_the_baseline_once_until_the_model_changes(digits_model_f64, digits_batch):
    model = copy.deepcopy(digits_model_f64)
    x = digits_batch[0][:6].double()
    calls = count_forwards(model)
    analyzer = DeepLIFT(model, baseline=0.1, batch_size=4)
    first = analyzer(x, target=2).attribution
    assert calls == [1, 4, 2]  # the shared baseline once, then both chunks of samples
    again = analyzer(x, target=2).attribution
    assert calls[3:] == [4, 2] and torch.equal(again, first)
    with torch.no_grad():  # an in-place change of the weights (an optimiser step, load_state_dict) is seen
        next(model.parameters()).mul_(1.5)
    changed = analyzer(x, target=2).attribution
    assert calls[5:] == [1, 4, 2]
    assert torch.equal(changed, DeepLIFT(model, baseline=0.1, batch_size=4)(x, target=2).attribution)
    assert not torch.allclose(changed, first)
    per_sample = DeepLIFT(model, baseline=torch.rand_like(x), batch_size=4)
    per_sample(x, target=2)
    assert per_sample.baseline_pass.calls is None  # one baseline per sample: its activations are not kept


def test_reused_shap_analyzer_runs_its_baselines_once(digits_model_f64, digits_batch):
    model = copy.deepcopy(digits_model_f64)
    x, baselines = digits_batch[0][:3].double(), digits_batch[0][3:5].double()
    calls = count_forwards(model)
    analyzer = DeepLIFTShap(model, baselines, batch_size=4)  # chunks of 4 pairs: both baselines in each
    first = analyzer(x, target=1).attribution
    assert calls == [2, 4, 2]
    assert torch.equal(analyzer(x, target=1).attribution, first) and calls[3:] == [4, 2]


# --- DeepLIFTShap -------------------------------------------------------------------------------------------


def test_deeplift_shap_equals_captum_batched_on_six_activations(six_activation_net, small_input):
    x, baselines = small_input
    ours = DeepLIFTShap(six_activation_net, baselines, batch_size=5)(x, target=torch.tensor([0, 1, 2, 3]))
    reference = CaptumDeepLiftShap(six_activation_net).attribute(x, baselines=baselines,
                                                                 target=torch.tensor([0, 1, 2, 3]))
    assert_relative_close(ours.attribution, reference)


def test_deeplift_shap_is_the_mean_of_deeplift_and_equals_captum(digits_model_f64, digits_batch):
    x = digits_batch[0][:2].double()
    baselines = digits_batch[0][2:5].double()
    ours = DeepLIFTShap(digits_model_f64, baselines, batch_size=4)(x)
    mean = torch.stack([DeepLIFT(digits_model_f64, baseline=b)(x, target=ours.target).attribution
                        for b in baselines]).mean(0)
    assert_relative_close(ours.attribution, mean, rtol=1e-12)
    reference = torch.stack([captum_deeplift_per_sample(digits_model_f64, x, b.expand_as(x), ours.target)
                             for b in baselines]).mean(0)
    assert_relative_close(ours.attribution, reference)


# --- GradientSHAP / ExpectedGradients -----------------------------------------------------------------------


def captum_gradient_shap_on_our_draws(monkeypatch, model, x, baselines, analyzer, target):
    """Captum's GradientShap with its draws (np.random.choice, np.random.uniform, the noise tunnel's normal noise)
    replaced by ours: Captum's row n * S + s gets our step s."""
    draws, samples, n = analyzer.draws(), analyzer.samples, x.shape[0]
    noise = analyzer.stdevs * smoothgrad_noise(x.shape[1:], samples, draws.noise_seed, x.dtype)
    per_row = lambda t: t.repeat(n, *([1] * (t.dim() - 1)))  # noqa: E731
    monkeypatch.setattr(np.random, "choice", lambda count, size: per_row(draws.index).numpy())
    monkeypatch.setattr(np.random, "uniform", lambda low, high, size: per_row(draws.alpha).numpy())
    monkeypatch.setattr(NoiseTunnel, "_add_noise_to_input", staticmethod(
        lambda inputs, stdev, k: inputs.repeat_interleave(k, dim=0) + per_row(noise)))
    return CaptumGradientShap(model).attribute(x, baselines=baselines, n_samples=samples,
                                               stdevs=analyzer.stdevs, target=target)


@pytest.mark.parametrize("stdevs", [0.0, 0.2])
def test_gradient_shap_equals_captum_on_the_same_draws(monkeypatch, case, stdevs):
    model, x, _ = case
    baselines = torch.randn((3, *x.shape[1:]), generator=torch.Generator().manual_seed(6), dtype=x.dtype)
    analyzer = GradientSHAP(model, baselines, samples=5, stdevs=stdevs, seed=11, batch_size=4)
    ours = analyzer(x)
    reference = captum_gradient_shap_on_our_draws(monkeypatch, model, x, baselines, analyzer, ours.target)
    assert_relative_close(ours.attribution, reference)


def test_expected_gradients_equals_captum_without_noise(monkeypatch, digits_model_f64, digits_batch):
    x, data = digits_batch[0][:3].double(), digits_batch[0][3:].double()
    analyzer = ExpectedGradients(digits_model_f64, data, samples=6, seed=4, batch_size=5)
    ours = analyzer(x)
    assert analyzer.stdevs == 0.0
    reference = captum_gradient_shap_on_our_draws(monkeypatch, digits_model_f64, x, data, analyzer, ours.target)
    assert_relative_close(ours.attribution, reference)


def test_gradient_shap_seeded_reproducible_and_batch_independent(digits_model_f64, digits_batch):
    x, data = digits_batch[0].double(), digits_batch[0][:4].double()
    first = GradientSHAP(digits_model_f64, data, samples=4, stdevs=0.1, seed=7)(x, target=3).attribution
    again = GradientSHAP(digits_model_f64, data, samples=4, stdevs=0.1, seed=7, batch_size=3)(x, target=3)
    other = GradientSHAP(digits_model_f64, data, samples=4, stdevs=0.1, seed=8)(x, target=3).attribution
    alone = GradientSHAP(digits_model_f64, data, samples=4, stdevs=0.1, seed=7)(x[2:3], target=3).attribution
    assert_relative_close(again.attribution, first, rtol=1e-12)
    assert_relative_close(alone, first[2:3], rtol=1e-12)
    assert (other - first).abs().max() > 1e-3 * first.abs().max()
    torch.manual_seed(0)
    fresh = ExpectedGradients(digits_model_f64, data, samples=4)(x, target=3).attribution
    torch.manual_seed(0)
    assert torch.equal(ExpectedGradients(digits_model_f64, data, samples=4)(x, target=3).attribution, fresh)


# --- bad arguments, unsupported models, the model left untouched -------------------------------------------------


@pytest.mark.parametrize("make, message", [
    (lambda m: DeepLIFT(m, baseline="zero"), "baseline must be"),
    (lambda m: DeepLIFT(m, baseline=torch.tensor([float("nan")])), "NaN"),
    (lambda m: DeepLIFT(m, batch_size=0), "batch_size"),
    (lambda m: DeepLIFTShap(m, baselines=[0.0]), "baselines must be a Tensor"),
    (lambda m: DeepLIFTShap(m, baselines=torch.zeros(3)), r"shape \(B, \*sample_shape\)"),
    (lambda m: GradientSHAP(m, torch.zeros(2, 1, 32, 32), samples=0), "samples must be a positive int"),
    (lambda m: GradientSHAP(m, torch.zeros(2, 1, 32, 32), stdevs=-1.0), "stdevs"),
    (lambda m: GradientSHAP(m, torch.zeros(2, 1, 32, 32), seed="1"), "seed must be an int"),
    (lambda m: ExpectedGradients(m, torch.full((2, 1, 32, 32), float("inf"))), "NaN or Inf"),
])
def test_bad_arguments(digits_model, make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make(digits_model)


def test_bad_shapes_against_the_input(digits_model, digits_batch):
    x = digits_batch[0]
    with pytest.raises(ValueError, match="does not broadcast"):
        DeepLIFT(digits_model, baseline=torch.zeros(2, 16, 16))(x)
    with pytest.raises(ValueError, match=r"give baselines of shape \(B, 1, 32, 32\)"):
        DeepLIFTShap(digits_model, torch.zeros(2, 1, 16, 16))(x)
    with pytest.raises(ValueError, match=r"give baselines of shape \(B, 1, 32, 32\)"):
        GradientSHAP(digits_model, torch.zeros(2, 3, 32, 32))(x)
    with pytest.raises(ValueError, match="the batch has 6 samples"):
        DeepLIFT(digits_model, batch_size=2)(x, target=torch.tensor([1, 2]))


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def model_state(model):
    flags = [(m.training, getattr(m, "inplace", None), getattr(m, "return_indices", None)) for m in model.modules()]
    return flags, [p.requires_grad for p in model.parameters()], hook_count(model)


def test_unsupported_modules_are_named_before_any_computation():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Sequential(nn.ReLU(), nn.Linear(8, 3)),
                          nn.Softmax(dim=1))
    for analyzer in (DeepLIFT(model), DeepLIFTShap(model, torch.zeros(2, 4))):
        with pytest.raises(UnsupportedModelError) as raised:
            analyzer(torch.randn(2, 4))
        assert "1 (LayerNorm)" in str(raised.value) and "3 (Softmax)" in str(raised.value)
        assert hook_count(model) == 0


def test_model_untouched_after_success_and_after_an_error(digits_model, digits_batch):
    model = copy.deepcopy(digits_model).train()
    model[0][0].weight.requires_grad_(False)
    relu = next(m for m in model.modules() if isinstance(m, nn.ReLU))
    relu.inplace = True  # run out of place while hooked, in place again after
    before = model_state(model)
    DeepLIFT(model)(digits_batch[0][:2])
    assert model_state(model) == before

    class Failing(nn.Module):  # fails inside the hooked forward pass, after the first ReLU's hooks ran
        def forward(self, x):
            raise RuntimeError("boom")

    model[1].append(Failing())
    before = model_state(model)
    with pytest.raises(RuntimeError, match="boom"):
        DeepLIFT(model)(digits_batch[0][:2])
    assert model_state(model) == before
