"""ModelParameterRandomisation and RandomLogit equal Quantus 0.6.0's MPRT and RandomLogit; MaxSensitivity,
AvgSensitivity and LocalLipschitzEstimate equal Quantus's and Captum's ``sensitivity_max``; each behaves as its
definition says where the answer is known.

Float64 throughout, tolerance 1e-5 relative (the same operations in another order). Random draws:
- the randomised models are the same because ours re-initialises with Quantus's draws (``torch.manual_seed(seed + 1)``
  before each layer's ``reset_parameters``), and RandomLogit's off-classes are ``RandomState(seed).randint`` as
  Quantus's (one batch: N <= batch_size);
- for the robustness metrics the references get our noise: a recording explainer keeps every noisy input ours
  explains, and Quantus's ``perturb_func`` / Captum's ``perturb_func`` hand those same inputs back.
"""
import copy
import itertools
import warnings

import numpy as np
import pytest
import quantus
import torch
from captum.metrics import sensitivity_max
from torch import nn

from evaluation import (
    AvgSensitivity, LocalLipschitzEstimate, MaxSensitivity, ModelParameterRandomisation, RandomLogit,
)
from evaluation.quantus_adapter import explain_func_for
from xai import GradCAM, Gradient

RTOL = 1e-5
NOISY_COPIES = 4


@pytest.fixture(scope="module")
def case(digits_model_f64, digits_batch):
    x, y = digits_batch
    x, y = x[:4].double(), y[:4].clone()
    return digits_model_f64, x, y, Gradient(digits_model_f64)(x, y).attribution


def quantus_kwargs(model, x, y, attribution, **extra):
    return dict(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=attribution.numpy().copy(),
                explain_func=explain_func_for(Gradient), channel_first=True, device="cpu", **extra)


def run_quantus(metric, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(**quantus_kwargs(*args, **kwargs))


def close(ours, reference):
    np.testing.assert_allclose(np.asarray(ours, dtype=np.float64), np.asarray(reference, dtype=np.float64),
                               rtol=RTOL, atol=0)


# ---------- ModelParameterRandomisation ----------


@pytest.mark.parametrize("independent", [False, True])
def test_model_parameter_randomisation_equals_quantus_layer_by_layer(case, independent):
    model, x, y, attribution = case
    ours = ModelParameterRandomisation(Gradient(model), layer_order="bottom_up" if independent else "top_down",
                                       independent=independent, progress=False)(model, x, attribution, y)
    reference = run_quantus(quantus.MPRT(layer_order="independent" if independent else "top_down",
                                         disable_warnings=True), model, x, y, attribution)
    reference.pop("original")  # Quantus also scores the unrandomised model (1 here: same explainer)
    assert list(ours.layer_scores) == list(reference) and len(reference) == 10  # 4 conv, 4 BatchNorm, 2 linear
    for layer, scores in reference.items():
        close(ours.layer_scores[layer], scores)
    close(ours.scores, np.mean(list(reference.values()), axis=0))


def quantus_ssim_as_array(a, b, batched=False, **kwargs):
    """Quantus's ssim, its list made an array (MPRT calls ``.tolist()`` on the result)."""
    return np.asarray(quantus.similarity_func.ssim(a, b, batched=batched, **kwargs))


def test_model_parameter_randomisation_ssim_equals_quantus_one_sample_at_a_time(case):
    """Quantus normalises by the maximum over the batch, which changes SSIM: one sample per call is per sample."""
    model, x, y, attribution = case
    ours = ModelParameterRandomisation(Gradient(model), similarity="ssim", progress=False)(model, x, attribution, y)
    for i in range(2):
        reference = run_quantus(quantus.MPRT(similarity_func=quantus_ssim_as_array, disable_warnings=True),
                                model, x[i : i + 1], y[i : i + 1], attribution[i : i + 1])
        reference.pop("original")
        for layer, scores in reference.items():
            close(ours.layer_scores[layer][i : i + 1], scores)


def test_quantus_mprt_fails_with_its_own_ssim(case):
    """Quantus bug: its batched ssim returns a list, on which MPRT calls ``.tolist()``; ours takes similarity="ssim"."""
    model, x, y, attribution = case
    with pytest.raises(AttributeError, match="tolist"):
        run_quantus(quantus.MPRT(similarity_func=quantus.similarity_func.ssim, disable_warnings=True),
                    model, x[:1], y[:1], attribution[:1])


def test_quantus_average_correlation_counts_the_unrandomised_model(case):
    """Quantus bug: ``return_average_correlation`` skips a key "orig" that does not exist, so the similarity to the
    *unrandomised* model's explanation ("original", 1 here) enters the mean over layers. Ours averages only the
    randomised layers."""
    model, x, y, attribution = case
    ours = ModelParameterRandomisation(Gradient(model), progress=False)(model, x, attribution, y)
    layers = torch.stack(list(ours.layer_scores.values()))
    quantus_mean = run_quantus(quantus.MPRT(return_average_correlation=True, disable_warnings=True),
                               model, x, y, attribution)
    close(quantus_mean, (1 + layers.sum(0)) / (len(layers) + 1))  # the 1 of the unrandomised model included
    close(ours.scores, layers.mean(0))
    assert (torch.as_tensor(quantus_mean) - ours.scores).abs().min() > 0.05


def sobel_edges(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """An explainer that ignores the model: the gradient magnitude of the image."""
    kernel = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=x.dtype).view(1, 1, 3, 3)
    gx, gy = nn.functional.conv2d(x, kernel, padding=1), nn.functional.conv2d(x, kernel.transpose(2, 3), padding=1)
    return torch.sqrt(gx**2 + gy**2)


@pytest.mark.parametrize("similarity", ["spearman", "ssim"])
def test_an_explainer_that_ignores_the_model_scores_one_at_every_layer(case, similarity):
    model, x, y, _ = case
    edges = sobel_edges(model, x, y)
    result = ModelParameterRandomisation(sobel_edges, similarity=similarity, progress=False)(model, x, edges, y)
    assert len(result.layer_scores) == 10
    for scores in result.layer_scores.values():
        torch.testing.assert_close(scores, torch.ones(len(x), dtype=x.dtype), rtol=0, atol=1e-12)
    assert not ModelParameterRandomisation.higher_is_better and not RandomLogit.higher_is_better


def test_the_users_model_and_analyzer_are_untouched(digits_model, digits_batch):
    x, y = digits_batch[0][:2], digits_batch[1][:2]
    model = copy.deepcopy(digits_model)
    model.train()  # a model in training mode stays so, its parameters trainable
    before = {key: value.clone() for key, value in model.state_dict().items()}
    analyzer = GradCAM(model)  # the analyzer holds a module of the model (its layer)
    attribution = analyzer(x, y).attribution
    result = ModelParameterRandomisation(analyzer, progress=False)(model, x, attribution, y)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert analyzer.model is model and dict(model.named_modules())[analyzer.layer] is analyzer.module
    # the copy's own layer was hooked: randomising the top layer changes the CAM (it would not on the original)
    assert (result.layer_scores["1.4"] < 0.999).all()
    torch.testing.assert_close(analyzer(x, y).attribution, attribution, rtol=0, atol=0)


def test_the_top_layer_alone_scores_the_same_cascading_or_independent(case):
    model, x, y, attribution = case
    cascading, independent = (
        ModelParameterRandomisation(Gradient(model), independent=flag, progress=False)(model, x, attribution, y)
        for flag in (False, True)
    )
    torch.testing.assert_close(cascading.layer_scores["1.4"], independent.layer_scores["1.4"], rtol=1e-12, atol=0)
    assert not torch.allclose(cascading.layer_scores["0.0"], independent.layer_scores["0.0"])


# ---------- RandomLogit ----------


def test_random_logit_spearman_equals_quantus(case):
    model, x, y, attribution = case
    ours = RandomLogit(Gradient(model), num_classes=10, similarity="spearman")(model, x, attribution, y)
    reference = run_quantus(quantus.RandomLogit(num_classes=10, similarity_func=quantus.similarity_func.
                                                correlation_spearman, disable_warnings=True), model, x, y, attribution)
    close(ours.scores, reference)


def test_random_logit_ssim_equals_quantus_one_sample_at_a_time(case):
    """Quantus normalises by the batch maximum and SSIM is not scale-free: one sample per call is per sample."""
    model, x, y, attribution = case
    metric = RandomLogit(Gradient(model), num_classes=10)  # ssim by default
    for i in range(len(x)):
        reference = run_quantus(quantus.RandomLogit(num_classes=10, disable_warnings=True),
                                model, x[i : i + 1], y[i : i + 1], attribution[i : i + 1])
        close(metric(model, x[i : i + 1], attribution[i : i + 1], y[i : i + 1]).scores, reference)
    # on the whole batch (same off-classes, N <= batch_size) Quantus's batch maximum changes the scores, ours not
    ours = metric(model, x, attribution, y).scores
    quantus_batch = run_quantus(quantus.RandomLogit(num_classes=10, disable_warnings=True), model, x, y, attribution)
    off = metric.off_classes(y, 10)
    alone = torch.cat([RandomLogit(lambda m, inputs, t, i=i: Gradient(m)(inputs, off[i : i + 1]).attribution)(
        model, x[i : i + 1], attribution[i : i + 1], y[i : i + 1]).scores for i in range(len(x))])
    close(ours, alone)
    assert np.abs(np.asarray(quantus_batch) - ours.numpy()).max() > 1e-3


def test_random_logit_explains_another_class_and_says_what_is_wrong(case):
    model, x, y, attribution = case
    off = RandomLogit(Gradient(model), num_classes=10).off_classes(torch.arange(10).repeat(100), 10)
    assert (off != torch.arange(10).repeat(100)).all() and off.min() == 0 and off.max() == 9
    with pytest.raises(ValueError, match="num_classes"):
        RandomLogit(Gradient(model), num_classes=1)
    with pytest.raises(ValueError, match="num_classes=20"):
        RandomLogit(Gradient(model), num_classes=20)(model, x, attribution, y)
    constant_in_class = lambda m, inputs, target: sobel_edges(m, inputs, target)  # noqa: E731
    edges = sobel_edges(model, x, y)
    torch.testing.assert_close(RandomLogit(constant_in_class)(model, x, edges, y).scores,
                               torch.ones(len(x), dtype=x.dtype), rtol=0, atol=1e-12)


# ---------- robustness ----------


class Recording:
    """Gradient of the model, keeping every input it is asked to explain (the noisy copies, in order)."""

    def __init__(self):
        self.inputs = []

    def __call__(self, model, x, target):
        self.inputs.append(x.clone())
        return Gradient(model)(x, target).attribution

    def copies(self, n):
        """(n, copies, ...): the noisy inputs of each sample."""
        inputs = torch.cat(self.inputs)
        return inputs.view(n, -1, *inputs.shape[1:])


def replaying(copies):
    """A Quantus perturb_func handing back our noisy inputs: step j of the batch = copy j of each sample."""
    steps = itertools.count()

    def perturb(arr, indices, **_):
        return copies[:, next(steps)].reshape(arr.shape).numpy()

    return perturb


@pytest.mark.parametrize("ours_class, reference_class", [(MaxSensitivity, quantus.MaxSensitivity),
                                                         (AvgSensitivity, quantus.AvgSensitivity)])
def test_sensitivity_equals_quantus_on_the_same_noise(case, ours_class, reference_class):
    model, x, y, attribution = case
    recording = Recording()
    ours = ours_class(recording, nr_samples=NOISY_COPIES, batch_size=3, progress=False)(model, x, attribution, y)
    copies = recording.copies(len(x))
    assert (copies - x[:, None]).abs().max() <= 0.2 and (copies - x[:, None]).abs().max() > 0.19  # U[-0.2, 0.2]
    reference = run_quantus(reference_class(nr_samples=NOISY_COPIES, perturb_func=replaying(copies),
                                            disable_warnings=True), model, x, y, attribution)
    close(ours.scores, reference)


def test_max_sensitivity_equals_captum_on_the_same_noise(case):
    model, x, y, attribution = case
    recording = Recording()
    ours = MaxSensitivity(recording, perturb_radius=0.02, nr_samples=NOISY_COPIES, progress=False)(
        model, x, attribution, y)
    copies = recording.copies(len(x))

    def explanation(inputs, target):  # Captum passes and expects tuples of tensors
        inputs = inputs[0] if isinstance(inputs, tuple) else inputs
        return (Gradient(model)(inputs, target).attribution,)

    reference = sensitivity_max(explanation, x, perturb_func=lambda inputs, radius: copies.flatten(0, 1),
                                perturb_radius=0.02, n_perturb_samples=NOISY_COPIES, target=y)
    close(ours.scores, reference)


def test_local_lipschitz_estimate_equals_quantus_on_the_same_noise(case):
    model, x, y, attribution = case
    recording = Recording()
    ours = LocalLipschitzEstimate(recording, nr_samples=NOISY_COPIES, progress=False)(model, x, attribution, y)
    copies = recording.copies(len(x))
    for i in range(len(x)):  # Quantus normalises by the batch maximum: one sample per call is per sample
        reference = run_quantus(quantus.LocalLipschitzEstimate(nr_samples=NOISY_COPIES, disable_warnings=True,
                                                               perturb_func=replaying(copies[i : i + 1])),
                                model, x[i : i + 1], y[i : i + 1], attribution[i : i + 1])
        close(ours.scores[i : i + 1], reference)
    batch = run_quantus(quantus.LocalLipschitzEstimate(nr_samples=NOISY_COPIES, disable_warnings=True,
                                                       perturb_func=replaying(copies)), model, x, y, attribution)
    assert np.abs(np.asarray(batch) / ours.scores.numpy() - 1).max() > 1e-2  # a sample's score depends on the batch


def test_local_lipschitz_estimate_without_normalising_equals_quantus_on_the_batch(case):
    model, x, y, attribution = case
    recording = Recording()
    ours = LocalLipschitzEstimate(recording, nr_samples=NOISY_COPIES, normalise=False, progress=False)(
        model, x, attribution, y)
    copies = recording.copies(len(x))
    reference = run_quantus(quantus.LocalLipschitzEstimate(nr_samples=NOISY_COPIES, normalise=False,
                                                           perturb_func=replaying(copies), disable_warnings=True),
                            model, x, y, attribution)
    close(ours.scores, reference)


def test_an_explainer_constant_in_x_has_sensitivity_zero_and_seeds_reproduce(case):
    model, x, y, _ = case
    fixed = torch.rand(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    constant = lambda m, inputs, target: fixed[0].expand_as(inputs)  # noqa: E731
    attribution = fixed[0].expand_as(x).clone()
    for metric in (MaxSensitivity, AvgSensitivity, LocalLipschitzEstimate):
        scores = metric(constant, nr_samples=3, progress=False)(model, x, attribution, y).scores
        assert torch.equal(scores, torch.zeros(len(x), dtype=x.dtype)) and not metric.higher_is_better
    gradient = Gradient(model)
    first, again, other = (MaxSensitivity(gradient, nr_samples=3, seed=s, progress=False)(
        model, x, gradient(x, y).attribution, y).scores for s in (1, 1, 2))
    assert torch.equal(first, again) and not torch.equal(first, other) and (first > 0).all()


def test_bad_arguments_are_refused_naming_the_fix(case, digits_model):
    model, x, y, attribution = case
    with pytest.raises(TypeError, match="explainer must be"):
        MaxSensitivity(Gradient)  # the class, not an analyzer
    with pytest.raises(ValueError, match="layer_order"):
        ModelParameterRandomisation(Gradient(model), layer_order="sideways")
    with pytest.raises(ValueError, match="similarity"):
        ModelParameterRandomisation(Gradient(model), similarity="pearson")
    with pytest.raises(ValueError, match="nr_samples"):
        AvgSensitivity(Gradient(model), nr_samples=0)
    with pytest.raises(ValueError, match="perturb_radius"):
        MaxSensitivity(Gradient(model), perturb_radius=-0.1)
    with pytest.raises(ValueError, match="seed"):
        LocalLipschitzEstimate(Gradient(model), seed=-1)
    with pytest.raises(ValueError, match="another model"):
        MaxSensitivity(Gradient(digits_model), nr_samples=2)(model, x, attribution, y)
    with pytest.raises(ValueError, match="shaped like"):
        MaxSensitivity(lambda m, inputs, t: inputs.sum(1), nr_samples=2)(model, x, attribution, y)
    with pytest.raises(ValueError, match="attribution has shape"):
        RandomLogit(Gradient(model))(model, x, attribution[:, :, :5], y)
