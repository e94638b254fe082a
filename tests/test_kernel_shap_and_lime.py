"""KernelSHAP and LIME equal Captum 0.9's KernelShap and Lime on the same feature mask and the same coalitions.

Captum is fed our draws: its ``perturb_func`` is replaced by a generator yielding, for each example in turn, the
coalitions ``xai.perturbation.surrogate.padded_coalitions`` draws for our seed. Float64 models. Captum rounds the regression data
(coalitions, outputs, weights) to float32 in ``LimeBase.attribute``, so the tolerance is 1e-5 relative to the largest
coefficient (measured: ~1e-6). For the Lasso, Captum's ``SkLearnLasso(alpha=0.01)`` gets its data in float64 and
tol=1e-12 so that scikit-learn's coordinate descent reaches the minimiser ours computes (at its default tol=1e-4 it
stops about 1e-4 short).
"""
import pytest
import torch
from captum._utils.models.linear_model import SkLearnLasso
from captum.attr import KernelShap, Lime
from captum.attr._core.lime import get_exp_kernel_similarity_function
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xai import LIME, KernelSHAP
from xai.perturbation.features import check_segments, feature_counts, grid_segments, slic_segments
from xai.perturbation.kernel_shap import kernel_shap_coalitions
from xai.perturbation.lime import lime_coalitions
from xai.perturbation.surrogate import padded_coalitions

SAMPLES, SEED = 48, 7


class Float64Lasso(SkLearnLasso):
    """Captum's SkLearnLasso, handed its (float32-rounded) data as float64 so that scikit-learn can converge."""

    def fit(self, train_data, **kwargs):
        tensors = [t.double() for t in train_data.dataset.tensors]
        return super().fit(DataLoader(TensorDataset(*tensors), batch_size=len(tensors[0])), **kwargs)


def feeder(coalitions: torch.Tensor):
    """A perturb_func for Captum yielding our coalitions (N, S, K), one example after the other."""
    per_example = iter(coalitions)

    def perturb(original_input, **kwargs):
        for row in next(per_example):
            yield row[None].long()
    return perturb


@pytest.fixture(scope="module", params=["digits", "resnet18"])
def case(request, digits_model_f64, digits_batch, resnet18_model_f64, resnet_input):
    if request.param == "digits":
        x = digits_batch[0][:3].double()
        return digits_model_f64, x, slic_segments(x, n_segments=12)
    x = resnet_input[:1].double()
    return resnet18_model_f64, x, grid_segments(x, cell=16)  # 16 features


def assert_relative_close(ours, reference, rtol=1e-5):
    error = (ours - reference).abs().max().item()
    scale = reference.abs().max().item()
    assert error <= rtol * scale, f"max abs error {error:.3e} > {rtol} * {scale:.3e}"


def test_kernel_shap_equals_captum(case):
    model, x, segments = case
    ours = KernelSHAP(model, features=segments, samples=SAMPLES, baseline=0.25, seed=SEED, batch_size=20)(x)
    reference = KernelShap(model)
    reference.perturb_func = feeder(padded_coalitions(feature_counts(segments), SAMPLES, SEED,
                                                      kernel_shap_coalitions))
    with pytest.warns(UserWarning) if len(x) > 1 else torch.no_grad():  # Captum warns about a batch of examples
        expected = reference.attribute(x, baselines=0.25, target=ours.target, feature_mask=segments[:, None],
                                       n_samples=SAMPLES, perturbations_per_eval=20)
    assert ours.attribution.shape == x.shape
    assert_relative_close(ours.attribution, expected.double())


def test_lime_equals_captum(case):
    model, x, segments = case
    ours = LIME(model, features=segments, samples=SAMPLES, kernel_width=0.5, baseline=0.25, seed=SEED,
                batch_size=20)(x)
    reference = Lime(model, interpretable_model=Float64Lasso(alpha=0.01, tol=1e-12, max_iter=10**6),
                     similarity_func=get_exp_kernel_similarity_function("cosine", kernel_width=0.5),
                     perturb_func=feeder(padded_coalitions(feature_counts(segments), SAMPLES, SEED, lime_coalitions)))
    with pytest.warns(UserWarning) if len(x) > 1 else torch.no_grad():
        expected = reference.attribute(x, baselines=0.25, target=ours.target, feature_mask=segments[:, None],
                                       n_samples=SAMPLES, perturbations_per_eval=20)
    assert_relative_close(ours.attribution, expected.double())
    assert (ours.attribution == 0).any()  # the Lasso zeroes some of the 12-16 features


def test_kernel_shap_draws_sizes_from_the_shapley_kernel():
    features, draws = 6, 60_000
    coalitions = kernel_shap_coalitions(features, draws + 2, torch.Generator().manual_seed(0))
    assert coalitions[0].all() and not coalitions[1].any()
    sizes = coalitions[2:].sum(1)
    k = torch.arange(1, features, dtype=torch.float64)
    expected = (1 / (k * (features - k))) / (1 / (k * (features - k))).sum()
    observed = torch.bincount(sizes, minlength=features)[1:].double() / draws
    assert torch.allclose(observed, expected, atol=0.01)  # 4 standard errors at 60000 draws
    first = coalitions[2:][sizes == 1].double().mean(0)  # a uniform subset: every feature alike
    assert torch.allclose(first, torch.full((features,), 1 / features, dtype=torch.float64), atol=0.01)


class Additive(nn.Module):
    """A linear model: its Shapley values are known, sum_(pixels of a feature) w (x - baseline)."""

    def __init__(self, shape):
        super().__init__()
        self.weight = nn.Parameter(torch.randn((2, *shape), generator=torch.Generator().manual_seed(1),
                                               dtype=torch.float64))

    def forward(self, x):
        return (x[:, None] * self.weight).flatten(2).sum(2)


def test_kernel_shap_is_exact_on_an_additive_model_and_efficient_on_a_cnn(digits_model_f64, digits_batch):
    x = digits_batch[0][:2].double()
    segments = grid_segments(x, cell=8)  # 16 features
    model = Additive(x.shape[1:])
    ours = KernelSHAP(model, features=segments, samples=40, baseline=0.5, seed=0)(x, target=1)
    contribution = (model.weight[1] * (x - 0.5)).sum(1)  # (N, H, W)
    exact = torch.zeros(2, 16, dtype=torch.float64).scatter_add_(1, segments.flatten(1), contribution.flatten(1))
    assert torch.allclose(ours.attribution[:, 0], exact.gather(1, segments.flatten(1)).view_as(segments),
                          rtol=1e-8, atol=1e-10)
    # efficiency on the CNN: the end coalitions' weight 1e6 ties the fit to f(x) - f(baseline) to ~1e-6
    explanation = KernelSHAP(digits_model_f64, features=segments, samples=200, baseline=0.0, seed=0)(x)
    pixels = explanation.attribution[:, 0].flatten(1)
    coef = torch.zeros(2, 16, dtype=torch.float64).scatter_(1, segments.flatten(1), pixels)
    with torch.no_grad():
        drop = (digits_model_f64(x) - digits_model_f64(torch.zeros_like(x))).gather(1, explanation.target[:, None])
    drop = drop[:, 0]
    assert torch.allclose(coef.sum(1), drop, rtol=1e-4, atol=1e-6)


def test_seeded_reproducible_and_batch_independent(digits_model, digits_batch):
    x = digits_batch[0][:3]
    for method in (KernelSHAP, LIME):
        first = method(digits_model, features="grid", samples=20, seed=5)(x).attribution
        assert torch.equal(first, method(digits_model, features="grid", samples=20, seed=5)(x).attribution)
        alone = method(digits_model, features="grid", samples=20, seed=5, batch_size=7)(x[1:2]).attribution
        torch.testing.assert_close(alone, first[1:2], rtol=1e-4, atol=1e-5)  # float32 model, other batches
        assert not torch.equal(first, method(digits_model, features="grid", samples=20, seed=6)(x).attribution)


def test_slic_segments_cover_the_image_with_contiguous_ids(digits_batch):
    # grey digits and smooth RGB images (SLIC merges pure noise into one segment, as scikit-image does)
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
                                             size=64, mode="bilinear")
    for x in (digits_batch[0][:2], smooth):
        segments = slic_segments(x, n_segments=20)
        assert segments.shape == (x.shape[0], *x.shape[2:]) and segments.dtype == torch.long
        for sample in segments:
            assert torch.equal(sample.unique(), torch.arange(int(sample.max()) + 1))
            assert 4 <= int(sample.max()) + 1 <= 40


def test_user_masks_are_broadcast_and_renumbered():
    x = torch.zeros(2, 1, 2, 3)
    mask = torch.tensor([[5, 5, 9], [9, 7, 7]])
    expected = torch.tensor([[0, 0, 2], [2, 1, 1]]).expand(2, 2, 3)
    assert torch.equal(check_segments(mask, x), expected)
    assert torch.equal(feature_counts(check_segments(torch.stack([mask, mask * 0]), x)), torch.tensor([3, 1]))
    assert torch.equal(grid_segments(torch.zeros(1, 1, 5, 5), cell=2)[0, 4], torch.tensor([6, 6, 7, 7, 8]))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"features": "superpixels"}, ValueError, "features='superpixels' is not known"),
    ({"features": 3}, TypeError, "features must be one of"),
    ({"samples": 1}, ValueError, "samples must be an int >= 2"),
    ({"seed": 1.5}, TypeError, "seed must be an int"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"baseline": float("nan")}, ValueError, "baseline"),
])
def test_bad_arguments(digits_model, kwargs, error, match):
    for method in (KernelSHAP, LIME):
        with pytest.raises(error, match=match):
            method(digits_model, **kwargs)


def test_bad_masks_and_lime_arguments(digits_model, digits_batch):
    x = digits_batch[0][:2]
    with pytest.raises(ValueError, match="kernel_width must be > 0"):
        LIME(digits_model, kernel_width=0.0)
    with pytest.raises(ValueError, match="alpha"):
        LIME(digits_model, alpha=-1.0)
    with pytest.raises(ValueError, match=r"features mask has shape \(3, 32, 32\)"):
        KernelSHAP(digits_model, features=torch.zeros(3, 32, 32, dtype=torch.long))(x)
    with pytest.raises(TypeError, match="integer feature ids"):
        LIME(digits_model, features=torch.zeros(32, 32))(x)
    with pytest.raises(ValueError, match="at least 2 features"):
        KernelSHAP(digits_model, features=torch.zeros(32, 32, dtype=torch.long))(x)
    with pytest.raises(ValueError, match="needs images"):
        KernelSHAP(nn.Linear(4, 2))(torch.randn(2, 4))
