"""ROAD and its imputer, Deletion/Insertion, FaithfulnessCorrelation and Infidelity, against their references.

- ``noisy_linear_imputation`` vs ``pytorch_grad_cam.metrics.road.NoisyLinearImputer`` (noise 0): grad-cam casts its
  solution to float32, so 1e-5 absolute on values in [0, 1] (float32 rounding is 6e-8 there).
- ``FaithfulnessCorrelation`` vs Quantus 0.6.0: Quantus is fed our subsets (its ``np.random.choice`` replaced by our
  draws, in its call order: run after run, sample after sample). Quantus converts inputs to float32 tensors, so its
  model is the float64 digits CNN behind a cast: the digits and the baseline 0 are exact in float32, and both sides
  run the same float64 forward passes; 1e-5 relative.
- ``Infidelity`` vs ``captum.metrics.infidelity``: Captum's perturbation function returns our noise draws; float64;
  1e-5 relative.
"""
import copy

import numpy as np
import pytest
import quantus
import torch
from captum.metrics import infidelity as captum_infidelity
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from torch import nn

from evaluation import (ROAD, Deletion, FaithfulnessCorrelation, Infidelity, Insertion, PixelFlipping,
                        noisy_linear_imputation)
from evaluation.faithfulness.perturbation_curve import target_score

RELATIVE = 1e-5


def random_mask(shape, fraction, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < fraction


@pytest.fixture(scope="module")
def digits(digits_batch):
    """Four digits in float64 (exact copies of the float32 originals) and their labels."""
    x, labels = digits_batch
    return x[:4].double(), labels[:4]


# ---------------------------------------------------------------- imputation


@pytest.mark.parametrize("shape", [None, (2, 3, 12, 17), (1, 2, 6, 150)], ids=["digits", "rgb", "wide"])
def test_imputation_equals_grad_cam(shape, digits):
    """digits and rgb take the banded solver; wide (a band of ~90 unknowns > BANDED_UP_TO) takes SuperLU."""
    if shape is None:
        x = digits[0]
    else:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    removed = random_mask((x.shape[0], *x.shape[2:]), 0.6, seed=x.shape[1])
    removed[0, 0, 0] = True  # a corner and a border pixel: neighbours outside the image
    removed[0, 5, 0] = True
    ours = noisy_linear_imputation(x, removed)
    imputer = NoisyLinearImputer(noise=0.0)
    # grad-cam's mask: 1 = known; it works in float32 (its solution is cast to torch.float)
    expected = torch.stack([imputer(x[i].float(), (~removed[i]).float()) for i in range(len(x))]).double()
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert (ours - x).abs()[removed.unsqueeze(1).expand_as(x)].max() > 0.01  # it did impute something


def test_imputed_pixels_lie_within_their_neighbours(digits):
    x = digits[0]
    removed = random_mask((len(x), 32, 32), 0.5, seed=5)
    imputed = noisy_linear_imputation(x, removed)
    padded_low = nn.functional.pad(imputed, (1, 1, 1, 1), value=float("inf"))
    padded_high = nn.functional.pad(imputed, (1, 1, 1, 1), value=float("-inf"))
    shifts = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
    window = lambda padded, dr, dc: padded[..., 1 + dr : 33 + dr, 1 + dc : 33 + dc]  # noqa: E731
    low = torch.stack([window(padded_low, *s) for s in shifts]).amin(0)
    high = torch.stack([window(padded_high, *s) for s in shifts]).amax(0)
    inside = removed.unsqueeze(1)
    assert ((imputed >= low - 1e-12) | ~inside).all() and ((imputed <= high + 1e-12) | ~inside).all()
    # a weighted mean of neighbours that are all equal is that value: a constant image stays constant
    constant = noisy_linear_imputation(torch.full_like(x, 0.3), removed)
    torch.testing.assert_close(constant, torch.full_like(x, 0.3), atol=1e-12, rtol=0)


def test_imputation_leaves_known_pixels_and_adds_seeded_noise(digits):
    x = digits[0]
    removed = random_mask((len(x), 32, 32), 0.4, seed=7)
    known = ~removed.unsqueeze(1).expand_as(x)
    clean = noisy_linear_imputation(x, removed)
    noisy = noisy_linear_imputation(x, removed, noise=0.1, seed=2)
    assert torch.equal(clean[known], x[known]) and torch.equal(noisy[known], x[known])
    torch.testing.assert_close(noisy, noisy_linear_imputation(x, removed, noise=0.1, seed=2), atol=0, rtol=0)
    added = (noisy - clean)[~known]
    assert abs(added.std().item() - 0.1) < 0.01 and abs(added.mean().item()) < 0.01  # ~1600 draws of N(0, 0.1^2)
    assert not torch.equal(noisy, noisy_linear_imputation(x, removed, noise=0.1, seed=3))


def test_imputation_rejects_bad_masks(digits):
    x = digits[0]
    with pytest.raises(ValueError, match="at least one known pixel"):
        noisy_linear_imputation(x, torch.ones(len(x), 32, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"removed has shape"):
        noisy_linear_imputation(x, torch.zeros(len(x), 1, 32, 32, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        noisy_linear_imputation(x, torch.zeros(len(x), 32, 32))
    with pytest.raises(ValueError, match="noise"):
        noisy_linear_imputation(x, torch.zeros(len(x), 32, 32, dtype=torch.bool), noise=-1.0)


# ---------------------------------------------------------------- ROAD


def test_road_curve_is_imputation_then_model(digits_model_f64, digits):
    x, labels = digits
    attribution = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = ROAD(percentages=(0.0, 0.25, 0.5), noise=0.0, batch_size=5, progress=False)(
        digits_model_f64, x, attribution, labels)
    relevance = attribution.sum(1).reshape(len(x), -1)
    for curve, descending in ((result.morf.curve, True), (result.lerf.curve, False)):
        rank = torch.argsort(torch.argsort(relevance, dim=1, descending=descending, stable=True), dim=1)
        for column, removed_count in ((1, 256), (2, 512)):
            removed = (rank < removed_count).view(len(x), 32, 32)
            with torch.no_grad():
                output = digits_model_f64(noisy_linear_imputation(x, removed))
            torch.testing.assert_close(curve[:, column], target_score(output, labels, True), rtol=RELATIVE, atol=0)
        with torch.no_grad():
            torch.testing.assert_close(curve[:, 0], target_score(digits_model_f64(x), labels, True))
    torch.testing.assert_close(result.scores, result.lerf.auc - result.morf.auc)
    assert torch.equal(result.morf.fraction, torch.tensor([0.0, 0.25, 0.5], dtype=torch.float64))


def test_road_orders_seed_and_batch_size(digits_model, digits_batch):
    x, labels = digits_batch
    attribution = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    options = dict(percentages=(0.0, 0.3, 0.6), seed=4, progress=False)
    both = ROAD(batch_size=64, **options)(digits_model, x, attribution, labels)
    chunked = ROAD(batch_size=5, **options)(digits_model, x, attribution, labels)
    torch.testing.assert_close(chunked.morf.curve, both.morf.curve, atol=1e-6, rtol=0)  # same draws, other chunks
    morf = ROAD(order="morf", **options)(digits_model, x, attribution, labels)
    assert morf.lerf is None and torch.equal(morf.scores, morf.morf.auc)
    assert ROAD.higher_is_better and ROAD().higher_is_better and not ROAD(order="morf").higher_is_better
    assert ROAD(order="lerf").higher_is_better
    other_seed = ROAD(batch_size=64, **{**options, "seed": 5})(digits_model, x, attribution, labels)
    assert not torch.equal(other_seed.morf.curve[:, 1:], both.morf.curve[:, 1:])


def test_road_random_attribution_scores_near_zero(digits_model):
    from pipeline.bundled import digits_split

    images, labels = digits_split("test")
    x, labels = images[:40], labels[:40]
    metric = ROAD(percentages=(0.0, 0.2, 0.4, 0.6, 0.8), seed=0, progress=False)
    random_srg = metric(digits_model, x, torch.rand(x.shape, generator=torch.Generator().manual_seed(2)), labels)
    informed_srg = metric(digits_model, x, x, labels)  # the bright strokes of the digit are what matters
    mean, error = random_srg.scores.mean(), random_srg.scores.std() / len(x) ** 0.5
    assert abs(mean) < 3 * error + 0.01
    assert informed_srg.scores.mean() > 10 * abs(mean) and informed_srg.scores.mean() > 0.05


@pytest.mark.parametrize("options, match", [
    ({"order": "random"}, "unknown order"),
    ({"percentages": (0.1,)}, "at least two"),
    ({"percentages": (0.5, 0.2)}, "increase"),
    ({"percentages": (0.0, 1.0)}, r"\[0, 1\)"),
    ({"noise": -0.1}, "noise"),
    ({"batch_size": 0}, "batch_size"),
])
def test_road_rejects_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        ROAD(**options)


# ---------------------------------------------------------------- Deletion / Insertion


@pytest.fixture(scope="module")
def linear_case():
    """A linear two-class model on 1x6x6 inputs, inputs, and the exact contribution of each pixel to the logit
    difference of class 0 over class 1 relative to the zero canvas (the perfect attribution)."""
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 2)).double().eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(2, 36, generator=generator, dtype=torch.float64))
    x = torch.rand(5, 1, 6, 6, generator=generator, dtype=torch.float64)
    perfect = ((model[1].weight[0] - model[1].weight[1]).detach().view(1, 1, 6, 6) * x)
    return model, x, perfect


def test_perfect_attribution_beats_reversed_one(linear_case):
    model, x, perfect = linear_case
    target = torch.zeros(len(x), dtype=torch.long)
    for metric in (Deletion(pixels_in_step=3, progress=False), Insertion(pixels_in_step=3, baseline=0.0, progress=False)):
        good = metric(model, x, perfect, target).scores
        bad = metric(model, x, -perfect, target).scores
        better = good > bad if metric.higher_is_better else good < bad
        assert better.all(), (type(metric).__name__, good, bad)


def test_deletion_and_insertion_curves(digits_model_f64, digits):
    x, labels = digits
    attribution = torch.randn(x.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    deletion = Deletion(pixels_in_step=64, progress=False)(digits_model_f64, x, attribution, labels)
    flipping = PixelFlipping(features_in_step=64, unit="pixel", progress=False)(digits_model_f64, x, attribution, labels)
    assert torch.equal(deletion.curve.curve, flipping.curve) and torch.equal(deletion.scores, flipping.auc)

    insertion = Insertion(pixels_in_step=64, blur_sigma=2.0, progress=False)(digits_model_f64, x, attribution, labels)
    from evaluation.faithfulness.baselines import gaussian_blur

    with torch.no_grad():
        on_x = target_score(digits_model_f64(x), labels, True)
        on_canvas = target_score(digits_model_f64(gaussian_blur(x, 2.0)), labels, True)
        # after 3 steps the 192 most relevant pixels hold x, the others the blurred canvas
        order = torch.argsort(attribution.reshape(4, -1), dim=1, descending=True, stable=True)
        inserted = torch.zeros(4, 1024, dtype=torch.bool).scatter_(1, order[:, :192], True).view(4, 1, 32, 32)
        after_three = target_score(digits_model_f64(torch.where(inserted, x, gaussian_blur(x, 2.0))), labels, True)
    curve = insertion.curve.curve
    assert curve.shape == (4, 17)
    torch.testing.assert_close(curve[:, 0], on_canvas)
    torch.testing.assert_close(curve[:, 3], after_three)
    torch.testing.assert_close(curve[:, -1], on_x)
    assert Deletion.higher_is_better is False and Insertion.higher_is_better is True


def test_curve_metrics_reject_bad_input(digits_model, digits_batch):
    x, _ = digits_batch
    with pytest.raises(ValueError, match="attribution has shape"):
        Deletion(progress=False)(digits_model, x, torch.rand(6, 1, 16, 16))
    with pytest.raises(ValueError, match="features per step"):
        Insertion(pixels_in_step=2000, progress=False)(digits_model, x, torch.rand(x.shape))
    with pytest.raises(ValueError, match="unknown baseline"):
        Deletion(baseline="black")


# ---------------------------------------------------------------- FaithfulnessCorrelation


class Float64(nn.Module):
    """Quantus hands the model float32 tensors: cast them (exactly, for float32-exact inputs) to float64."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.double())


@pytest.mark.parametrize("softmax", [False, True], ids=["logit", "softmax"])
def test_faithfulness_correlation_equals_quantus(digits_model_f64, digits, monkeypatch, softmax):
    x, labels = digits
    attribution = torch.randn(x.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    metric = FaithfulnessCorrelation(nr_runs=12, subset_size=200, baseline=0.0, softmax=softmax, seed=3,
                                     batch_size=7, progress=False)
    ours = metric(digits_model_f64, x, attribution, labels)
    subsets = ours.subsets.numpy()  # (N, runs, size); Quantus draws run after run, sample after sample
    draws = iter(subsets[i, r] for r in range(metric.nr_runs) for i in range(len(x)))
    monkeypatch.setattr(np.random, "choice", lambda *args, **kwargs: next(draws))
    expected = quantus.FaithfulnessCorrelation(
        nr_runs=metric.nr_runs, subset_size=metric.subset_size, perturb_baseline=0.0, return_aggregate=False,
        disable_warnings=True, display_progressbar=False,
    )(model=Float64(digits_model_f64).eval(), x_batch=x.numpy(), y_batch=labels.numpy(), a_batch=attribution.numpy(),
      channel_first=True, softmax=softmax, device="cpu", batch_size=len(x))
    torch.testing.assert_close(ours.scores, torch.tensor(expected, dtype=torch.float64), rtol=RELATIVE, atol=1e-12)
    assert ours.scores.abs().max() > 0.05  # not a degenerate zero correlation
    # subsets: distinct indices, reproducible from the seed, and fresh without one
    assert all(len(set(s.tolist())) == 200 for s in ours.subsets.reshape(-1, 200))
    assert torch.equal(metric.draw_subsets(len(x), 1024), ours.subsets)
    fresh = FaithfulnessCorrelation(nr_runs=12, subset_size=200, progress=False)
    assert not torch.equal(fresh.draw_subsets(len(x), 1024), fresh.draw_subsets(len(x), 1024))


def test_faithfulness_correlation_of_exact_attribution_is_one(linear_case):
    model, x, perfect = linear_case
    # the logit difference is linear: removing a subset drops it by exactly the subset's contribution
    two_class_difference = nn.Sequential(model, nn.Linear(2, 2, bias=False).double())
    with torch.no_grad():
        two_class_difference[1].weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.0]], dtype=torch.float64))
    result = FaithfulnessCorrelation(nr_runs=20, subset_size=6, seed=0, progress=False)(
        two_class_difference, x, perfect, 0)
    torch.testing.assert_close(result.scores, torch.ones(len(x), dtype=torch.float64))


def test_faithfulness_correlation_rejects_bad_input(digits_model, digits_batch):
    x, _ = digits_batch
    with pytest.raises(ValueError, match="subset_size=2000 is more than the 1024"):
        FaithfulnessCorrelation(subset_size=2000, progress=False)(digits_model, x, torch.rand(x.shape))
    with pytest.raises(ValueError, match="nr_runs must be at least 2"):
        FaithfulnessCorrelation(nr_runs=1)
    with pytest.raises(ValueError, match="subset_size must be a positive int"):
        FaithfulnessCorrelation(subset_size=0)


# ---------------------------------------------------------------- Infidelity


@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "normalize"])
def test_infidelity_equals_captum(digits_model_f64, digits, normalize):
    x, labels = digits
    attribution = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 0.1
    metric = Infidelity(n_perturb_samples=6, noise_std=0.05, normalize=normalize, seed=11, batch_size=5,
                        progress=False)
    ours = metric(digits_model_f64, x, attribution, labels)
    # our draws: sample after sample, one (n_perturb_samples, C, H, W) standard normal draw each
    generator = torch.Generator().manual_seed(11)
    noise = torch.stack([0.05 * torch.randn((6, 1, 32, 32), generator=generator, dtype=torch.float64)
                         for _ in range(len(x))])

    def replay(inputs):  # Captum repeats each input n_perturb_samples times (repeat_interleave)
        flat = noise.reshape(-1, 1, 32, 32)
        return flat, inputs - flat

    expected = captum_infidelity(digits_model_f64, replay, x, attribution, target=labels, n_perturb_samples=6,
                                 normalize=normalize)
    torch.testing.assert_close(ours.scores, expected, rtol=RELATIVE, atol=0)
    assert (expected > 0).all()
    # a one-channel attribution on RGB input multiplies every channel's noise, as in Captum (broadcast)
    assert Infidelity.higher_is_better is False


def test_infidelity_draws_do_not_depend_on_batch_size(digits_model, digits_batch):
    x, labels = digits_batch
    attribution = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    results = [Infidelity(n_perturb_samples=4, seed=1, batch_size=b, progress=False)(
        digits_model, x, attribution, labels).scores for b in (3, 64)]
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-9)  # float32 forwards in other batches


def test_infidelity_rejects_bad_input_and_leaves_the_model(digits_model, digits_batch):
    x, _ = digits_batch
    with pytest.raises(ValueError, match="noise_std must be positive"):
        Infidelity(noise_std=0.0)
    with pytest.raises(ValueError, match="n_perturb_samples"):
        Infidelity(n_perturb_samples=0)
    model = copy.deepcopy(digits_model).train()
    with pytest.raises(ValueError, match="target"):
        Infidelity(progress=False)(model, x, torch.rand(x.shape), torch.tensor([1, 2]))
    assert model.training and all(p.requires_grad for p in model.parameters())
    ROAD(percentages=(0.0, 0.5), progress=False)(model, x[:2], torch.rand(2, 1, 32, 32))
    assert model.training and all(p.requires_grad for p in model.parameters())
