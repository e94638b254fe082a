"""PixelFlipping and SRG: hand-computed curves on a tiny linear model, formulas, invariances, bad input.

Exact float32 arithmetic on small integers: tolerance 1e-5. Invariance tests (batch size, steps, device) compare
float32 forward passes of the digits CNN on different batch compositions: tolerance 1e-5.
"""
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

import evaluation.faithfulness.perturbation_curve
from evaluation import PixelFlipping, SymmetricRelevanceGain, make_baseline
from evaluation.common.ordering import stable_argsort

ATOL = 1e-5

# x (1, 2, 1, 3): channel 0 = [1, 2, 3], channel 1 = [4, 5, 6]
X = torch.tensor([[[[1.0, 2.0, 3.0]], [[4.0, 5.0, 6.0]]]])
# logit of class 0 = sum(W * x) = 1 - 2 + 6 + 4 + 10 - 18 = 1; class 1 is constant 0
W = torch.tensor([[[1.0, -1.0, 2.0]], [[1.0, 2.0, -3.0]]])
# input x gradient: channel values [1, -2, 6, 4, 10, -18]; pixel sums [5, 8, -12]
A = (W * X).clone()


def linear_model(weight: torch.Tensor = W) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(weight.numel(), 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0] = weight.flatten()
        model[1].bias.zero_()
    return model.eval()


def curve(metric, x=X, attribution=A, model=None):
    return metric(model or linear_model(), x, attribution, 0)


# hand-computed: flipping a feature i to baseline b_i changes the logit by -W_i (x_i - b_i)
HAND_CURVES = [
    # unit, order, per step, baseline, expected logit curve
    ("pixel", "morf", 1, 0.0, [1, -7, -12, 0]),      # pixels 1 (8), 0 (5), 2 (-12)
    ("pixel", "lerf", 1, 0.0, [1, 13, 8, 0]),        # pixels 2, 0, 1
    ("channel", "morf", 2, 0.0, [1, -15, -20, 0]),   # {10, 6}, {4, 1}, {-2, -18}
    ("channel", "lerf", 2, 0.0, [1, 21, 16, 0]),     # {-18, -2}, {1, 4}, {6, 10}
    ("pixel", "morf", 1, 1.0, [1, -6, -9, 2]),       # pixel 1: -1*1 + 2*4 = 7; pixel 0: 0 + 3; pixel 2: 4 - 15
    ("pixel", "morf", 1, "mean", [1, 1, 3, 4]),      # means 2 and 5: pixel 1: 0; pixel 0: -1 - 1; pixel 2: 2 - 3
]


@pytest.mark.parametrize("unit,order,per_step,baseline,expected", HAND_CURVES)
def test_hand_computed_curves(unit, order, per_step, baseline, expected):
    metric = PixelFlipping(features_in_step=per_step, baseline=baseline, unit=unit, order=order, softmax=False)
    result = curve(metric)
    torch.testing.assert_close(result.curve, torch.tensor([expected], dtype=torch.float32), atol=ATOL, rtol=0)
    torch.testing.assert_close(result.fraction, torch.tensor([0, 1 / 3, 2 / 3, 1]), atol=1e-7, rtol=0)


def test_channel_mean_baseline_lerf_by_hand():
    # LeRF over channel values: {-18 (c1,w2), -2 (c0,w1), 1 (c0,w0)} then {4 (c1,w0), 6 (c0,w2), 10 (c1,w1)}
    # step 1: -(-3)(6-5) - (-1)(2-2) - 1(1-2) = 3 + 0 + 1 -> 5; step 2: -1(4-5) - 2(3-2) - 2(5-5) = 1 - 2 -> 4
    metric = PixelFlipping(features_in_step=3, baseline="mean", unit="channel", order="lerf", softmax=False)
    torch.testing.assert_close(curve(metric).curve, torch.tensor([[1.0, 5.0, 4.0]]), atol=ATOL, rtol=0)


def expected_linear_curve(x, weight, baseline, flip_order, per_step):
    """f(x) - sum over flipped channel values of W_i (x_i - b_i), flipping ``flip_order`` (flat indices) in groups."""
    x, weight, baseline = x.flatten().double(), weight.flatten().double(), baseline.flatten().double()
    values, logit = [float(weight @ x)], float(weight @ x)
    for start in range(0, len(flip_order), per_step):
        for i in flip_order[start : start + per_step]:
            logit -= float(weight[i] * (x[i] - baseline[i]))
        values.append(logit)
    return torch.tensor([values], dtype=torch.float32)


def test_blur_baseline_is_scipy_gaussian_filter_and_gives_the_linear_curve():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 2, 9, 11, generator=generator)
    weight = torch.randn(2, 9, 11, generator=generator)
    sigma = 2.0  # scipy's radius int(3 * 2 + 0.5) = 6 = ours ceil(3 * 2)
    baseline = make_baseline("blur", x, blur_sigma=sigma)
    scipy_blur = np.stack([gaussian_filter(c, sigma, mode="nearest", truncate=3.0) for c in x[0].double().numpy()])
    torch.testing.assert_close(baseline[0], torch.tensor(scipy_blur, dtype=torch.float32), atol=1e-6, rtol=0)

    attribution = torch.randn(x.shape, generator=generator)
    metric = PixelFlipping(features_in_step=20, baseline="blur", blur_sigma=sigma, unit="channel", softmax=False)
    result = curve(metric, x, attribution, linear_model(weight))
    order = torch.argsort(attribution.flatten(), descending=True).tolist()
    torch.testing.assert_close(result.curve, expected_linear_curve(x, weight, baseline, order, 20), atol=ATOL, rtol=0)


def test_uniform_baseline_formula_and_seed():
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(2, 2, 4, 4, generator=generator) * 3 - 1
    u = torch.rand((2, 4, 4), generator=torch.Generator().manual_seed(7))
    low, high = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(make_baseline("uniform", x, seed=7), low + u * (high - low))

    weight = torch.randn(2, 4, 4, generator=generator)
    attribution = torch.randn(x.shape, generator=generator)
    metric = PixelFlipping(features_in_step=8, baseline="uniform", seed=7, unit="channel", softmax=False)
    result = metric(linear_model(weight), x, attribution, 0)
    for n in range(2):
        order = torch.argsort(attribution[n].flatten(), descending=True).tolist()
        expected = expected_linear_curve(x[n], weight, low[n] + u * (high[n] - low[n]), order, 8)
        torch.testing.assert_close(result.curve[n : n + 1], expected, atol=ATOL, rtol=0)
    again = metric(linear_model(weight), x, attribution, 0)
    other = PixelFlipping(features_in_step=8, baseline="uniform", seed=8, unit="channel", softmax=False)(
        linear_model(weight), x, attribution, 0
    )
    assert torch.equal(again.curve, result.curve)
    assert (other.curve[:, 1:] - result.curve[:, 1:]).abs().max() > 1e-3


@pytest.mark.parametrize("baseline", [0.5, "mean", "blur", "uniform"])
@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("unit", ["pixel", "channel"])
def test_every_unit_order_and_baseline_gives_the_linear_curve(unit, order, baseline):
    generator = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 4, 4, generator=generator)
    weight = torch.randn(3, 4, 4, generator=generator)
    attribution = torch.randn(x.shape, generator=generator)
    metric = PixelFlipping(features_in_step=2, baseline=baseline, unit=unit, order=order, softmax=False,
                           blur_sigma=1.0, seed=5)
    result = metric(linear_model(weight), x, attribution, 0)
    values = make_baseline(baseline, x, seed=5, blur_sigma=1.0) if isinstance(baseline, str) else torch.full_like(
        x, baseline
    )
    for n in range(2):
        if unit == "pixel":  # pixels by summed relevance, each with its 3 channel values (flat index c * 16 + p)
            pixels = torch.argsort(attribution[n].sum(0).flatten(), descending=order == "morf", stable=True)
            flat, per_step = [int(p) + 16 * c for p in pixels for c in range(3)], 6
        else:
            flat = torch.argsort(attribution[n].flatten(), descending=order == "morf", stable=True).tolist()
            per_step = 2
        expected = expected_linear_curve(x[n], weight, values[n], flat, per_step)
        torch.testing.assert_close(result.curve[n : n + 1], expected, atol=ATOL, rtol=0)


def test_softmax_tracks_the_probability():
    # class 1 has logit 0, so the probability of class 0 is sigmoid(logit)
    result = curve(PixelFlipping(features_in_step=1, baseline=0.0, softmax=True))
    expected = torch.sigmoid(torch.tensor([[1.0, -7.0, -12.0, 0.0]]))
    torch.testing.assert_close(result.curve, expected, atol=1e-6, rtol=0)


def test_auc_and_aopc_by_formula():
    result = curve(PixelFlipping(features_in_step=1, baseline=0.0, softmax=False))  # curve 1, -7, -12, 0
    # trapezoid with dx = 1/3: (1/3) (1/2 - 7 - 12 + 0/2); AOPC = 1/4 sum (1 - c_k) = (0 + 8 + 13 + 1) / 4
    torch.testing.assert_close(result.auc, torch.tensor([(0.5 - 7 - 12) / 3]), atol=ATOL, rtol=0)
    torch.testing.assert_close(result.aopc, torch.tensor([22 / 4]), atol=ATOL, rtol=0)


def test_uneven_last_step_uses_the_true_fraction():
    # 6 channel values, 4 per step: fractions 0, 4/6, 1; curve by hand: {10, 6, 4, 1} -> 1 - 21 = -20; rest -> 0
    result = curve(PixelFlipping(features_in_step=4, baseline=0.0, unit="channel", softmax=False))
    torch.testing.assert_close(result.fraction, torch.tensor([0, 4 / 6, 1]), atol=1e-7, rtol=0)
    torch.testing.assert_close(result.curve, torch.tensor([[1.0, -20.0, 0.0]]), atol=ATOL, rtol=0)
    expected_auc = 4 / 6 * (1 - 20) / 2 + 2 / 6 * (-20 + 0) / 2
    assert math.isclose(result.auc.item(), expected_auc, abs_tol=ATOL)


def test_steps_spread_features_evenly():
    by_steps = curve(PixelFlipping(steps=3, baseline=0.0, unit="channel", softmax=False))
    by_size = curve(PixelFlipping(features_in_step=2, baseline=0.0, unit="channel", softmax=False))
    torch.testing.assert_close(by_steps.curve, by_size.curve)
    # 1024 pixels in 3 steps: ceil(s * 1024 / 3) pixels flipped after step s
    result = PixelFlipping(steps=3, progress=False)(linear_model(torch.ones(1, 32, 32)), torch.rand(1, 1, 32, 32),
                                                    torch.rand(1, 1, 32, 32), 0)
    torch.testing.assert_close(result.fraction, torch.tensor([0, 342 / 1024, 683 / 1024, 1]), atol=1e-7, rtol=0)


def test_one_channel_attribution_ranks_pixels_and_channel_copies_together():
    x = torch.rand(1, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    weight = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(1))
    attribution = torch.tensor([[[[0.1, 0.9], [0.5, -0.3]]]])  # pixel order (0,1), (1,0), (0,0), (1,1)
    model = linear_model(weight)
    pixel = PixelFlipping(features_in_step=1, baseline=0.0, softmax=False)(model, x, attribution, 0)
    channel = PixelFlipping(features_in_step=3, baseline=0.0, unit="channel", softmax=False)(model, x, attribution, 0)
    # a 1-channel attribution copied to 3 channels: each group of 3 channel values is one pixel
    torch.testing.assert_close(pixel.curve, channel.curve, atol=ATOL, rtol=0)
    flat = [p + c * 4 for p in (1, 2, 0, 3) for c in range(3)]
    torch.testing.assert_close(pixel.curve, expected_linear_curve(x, weight, torch.zeros_like(x), flat, 3),
                               atol=ATOL, rtol=0)


def test_srg_of_a_perfect_linear_attribution_is_positive_and_of_its_negation_negative():
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 8, 8, generator=generator)
    weight = torch.randn(3, 8, 8, generator=generator)
    model = linear_model(weight)
    perfect = weight * x  # exact contribution of each value to the logit for baseline 0
    srg = SymmetricRelevanceGain(PixelFlipping(features_in_step=4, baseline=0.0, unit="channel", softmax=False))
    good, bad = srg(model, x, perfect, 0), srg(model, x, -perfect, 0)
    assert (good.srg > 0).all() and (bad.srg < 0).all()
    torch.testing.assert_close(bad.srg, -good.srg, atol=1e-4, rtol=0)
    # the parts agree with separate runs
    morf = PixelFlipping(features_in_step=4, baseline=0.0, unit="channel", softmax=False)(model, x, perfect, 0)
    torch.testing.assert_close(good.morf.curve, morf.curve)
    torch.testing.assert_close(good.srg, good.lerf.auc - morf.auc)
    # removing the k largest contributions gives the lowest logit any k flips can reach, the k smallest the highest
    other = srg(model, x, torch.randn(x.shape, generator=generator), 0)
    assert (good.morf.curve <= other.morf.curve + ATOL).all() and (good.lerf.curve >= other.lerf.curve - ATOL).all()


@pytest.fixture
def digits_case(digits_model, digits_batch):
    x, labels = digits_batch
    attribution = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    return digits_model, x, attribution, labels


@pytest.mark.parametrize("baseline", [0.0, "mean", "blur", "uniform"])
def test_batch_size_does_not_change_results(digits_case, baseline):
    model, x, attribution, labels = digits_case
    results = [
        SymmetricRelevanceGain(PixelFlipping(features_in_step=256, baseline=baseline, batch_size=b, progress=False))(
            model, x, attribution, labels
        )
        for b in (5, 1000)  # 5 splits chunks across samples and across the MoRF/LeRF boundary
    ]
    for other in results[1:]:
        torch.testing.assert_close(other.morf.curve, results[0].morf.curve, atol=ATOL, rtol=0)
        torch.testing.assert_close(other.lerf.curve, results[0].lerf.curve, atol=ATOL, rtol=0)


def test_finer_steps_contain_the_coarser_curve(digits_case):
    model, x, attribution, labels = digits_case
    fine = PixelFlipping(features_in_step=32, unit="pixel", progress=False)(model, x, attribution, labels)
    coarse = PixelFlipping(features_in_step=128, unit="pixel", progress=False)(model, x, attribution, labels)
    torch.testing.assert_close(fine.curve[:, ::4], coarse.curve, atol=ATOL, rtol=0)
    torch.testing.assert_close(fine.fraction[::4], coarse.fraction)


def test_samples_are_independent_of_their_batch(digits_case):
    model, x, attribution, labels = digits_case
    metric = PixelFlipping(features_in_step=128, baseline="uniform", progress=False)
    whole = metric(model, x, attribution, labels)
    part = metric(model, x[2:4], attribution[2:4], labels[2:4])
    torch.testing.assert_close(part.curve, whole.curve[2:4], atol=ATOL, rtol=0)


def test_target_none_is_the_top_class(digits_case):
    model, x, attribution, _ = digits_case
    result = PixelFlipping(features_in_step=256, progress=False)(model, x, attribution)
    with torch.no_grad():
        output = model(x)
    assert torch.equal(result.target, output.argmax(1))
    torch.testing.assert_close(result.curve[:, 0], output.softmax(1).amax(1), atol=1e-6, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_does_not_change_results(digits_case):
    import copy

    model, x, attribution, labels = digits_case
    metric = PixelFlipping(features_in_step=128, baseline="uniform", progress=False)
    cpu = metric(model, x, attribution, labels)
    gpu = metric(copy.deepcopy(model).cuda(), x, attribution, labels)
    assert gpu.curve.device == x.device
    torch.testing.assert_close(gpu.curve, cpu.curve, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("descending", [True, False])
def test_stable_argsort_is_torchs_stable_argsort(dtype, descending):
    values = torch.randn(3, 500, generator=torch.Generator().manual_seed(0))
    values[:, ::7] = 0.0
    values[:, ::11] = -0.0  # compares equal to 0.0: a tie, not a smaller value
    values[:, 1::13] = 1.5
    values[0, :8] = torch.tensor([math.inf, -math.inf, 1e-45, -1e-45, 3e38, -3e38, 0.0, -0.0])
    values = values.to(dtype)
    expected = torch.argsort(values, dim=1, descending=descending, stable=True)
    assert torch.equal(stable_argsort(values, descending), expected)


def test_softmax_over_several_groups_of_logits_gives_the_same_curves(digits_case, monkeypatch):
    model, x, attribution, labels = digits_case
    metric = SymmetricRelevanceGain(PixelFlipping(features_in_step=256, batch_size=5, progress=False))
    together = metric(model, x, attribution, labels)
    monkeypatch.setattr(evaluation.faithfulness.perturbation_curve, "LOGITS_KEPT", 1)  # one softmax per forward pass
    apart = metric(model, x, attribution, labels)
    assert torch.equal(apart.morf.curve, together.morf.curve) and torch.equal(apart.lerf.curve, together.lerf.curve)


def test_model_mode_is_restored(digits_case):
    model, x, attribution, labels = digits_case
    model.train()
    try:
        PixelFlipping(features_in_step=256, progress=False)(model, x, attribution, labels)
        assert model.training and all(p.requires_grad for p in model.parameters())
    finally:
        model.eval()


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: PixelFlipping(baseline="black"), "unknown baseline 'black'"),
        (lambda: PixelFlipping(baseline=True), "baseline must be a number"),
        (lambda: PixelFlipping(unit="pixels"), "unknown unit 'pixels'"),
        (lambda: PixelFlipping(order="random"), "unknown order 'random'"),
        (lambda: PixelFlipping(features_in_step=4, steps=8), "not both"),
        (lambda: PixelFlipping(batch_size=0), "batch_size must be a positive int"),
    ],
)
def test_bad_options(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize(
    "metric,attribution,match",
    [
        (PixelFlipping(), torch.zeros(1, 2, 3), "attribution has shape \\(1, 2, 3\\) but the input has shape"),
        (PixelFlipping(), torch.zeros(1, 2, 1, 2), "attribution has shape"),
        (PixelFlipping(), A.clone().index_put_((torch.tensor(0),) * 4, torch.tensor(float("nan"))), "NaN or Inf"),
        (PixelFlipping(), A.clone().index_put_((torch.tensor(0),) * 4, torch.tensor(float("inf"))), "NaN or Inf"),
        (PixelFlipping(features_in_step=4), A, "4 features per step is more than the 3 pixel features"),
        (PixelFlipping(features_in_step=7, unit="channel"), A, "more than the 6 channel features"),
        (PixelFlipping(steps=4), A, "4 steps is more than the 3 pixel"),
    ],
)
def test_bad_input(metric, attribution, match):
    with pytest.raises(ValueError, match=match):
        metric(linear_model(), X, attribution, 0)
