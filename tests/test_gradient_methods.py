"""Our gradient methods against Captum, and Integrated Gradients' completeness.

Tolerance (written down): in float64, ``max |ours - captum| <= 1e-5 * max |captum|`` per comparison,
i.e. 1e-5 relative to the attribution's scale. Elementwise relative error is meaningless for entries
that are (near) zero, so the scale is the largest reference magnitude.
"""
import pytest
import torch
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import InputXGradient, NoiseTunnel, Saliency
from captum.attr._utils.approximation_methods import approximation_parameters

from xai import Gradient, InputTimesGradient, IntegratedGradients, SmoothGrad
from xai.batchnorm_folding import fold_batchnorm
from xai.gradient.integrated_gradients import SCHEMES
from xai.gradient.smoothgrad import noise_sigma, smoothgrad_noise

RTOL = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")


def assert_relative_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL) -> None:
    scale = expected.abs().max()
    assert scale > 0, "reference attribution is all zeros: the comparison would prove nothing"
    error = (actual - expected).abs().max()
    assert error <= rtol * scale, f"max abs error {error:.3e} > {rtol} * {scale:.3e}"


@pytest.fixture(params=["digits", "resnet18"])
def case(request, digits_model_f64, digits_batch, resnet18_model_f64, resnet_input):
    """(float64 model, float64 input, per-sample targets that are not all the argmax)."""
    if request.param == "digits":
        model, x = digits_model_f64, digits_batch[0].double()
    else:
        model, x = resnet18_model_f64, resnet_input.double()
    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
    target = torch.arange(x.shape[0]) * 7 % n_classes
    return model, x, target


def test_gradient_equals_captum_saliency(case):
    model, x, target = case
    ours = Gradient(model)(x, target=target).attribution
    assert_relative_close(ours, Saliency(model).attribute(x, target=target, abs=False))


def test_input_times_gradient_equals_captum(case):
    model, x, target = case
    ours = InputTimesGradient(model)(x, target=target).attribution
    assert_relative_close(ours, InputXGradient(model).attribute(x, target=target))


def test_smoothgrad_without_noise_equals_captum_noise_tunnel(case):
    model, x, target = case
    ours = SmoothGrad(model, samples=4, noise_level=0.0, seed=1, batch_size=3)(x, target=target).attribution
    captum = NoiseTunnel(Saliency(model)).attribute(
        x, nt_type="smoothgrad", nt_samples=4, stdevs=0.0, target=target, abs=False
    )
    assert_relative_close(ours, captum)


@pytest.mark.parametrize("fold", [False, True])
def test_smoothgrad_is_the_mean_of_captum_gradients_over_the_same_noise(case, fold):
    """With ``fold_batchnorm=True`` Captum runs the same folded model (see the IG test below for why)."""
    model, x, target = case
    samples, noise_level, seed = 5, 0.15, 7
    ours = SmoothGrad(model, samples, noise_level, seed=seed, batch_size=4, fold_batchnorm=fold)
    ours = ours(x, target=target).attribution
    noise = smoothgrad_noise(x.shape[1:], samples, seed, dtype=x.dtype)
    sigma = noise_sigma(x, noise_level)
    saliency = Saliency(fold_batchnorm(model) if fold else model)
    captum = torch.stack(
        [saliency.attribute(x + sigma * noise[s], target=target, abs=False) for s in range(samples)]
    ).mean(dim=0)
    assert_relative_close(ours, captum)
    # the noise must matter, else this test would only repeat the zero-noise one
    plain = Gradient(model)(x, target=target).attribution
    assert (ours - plain).abs().max() > 1e-3 * plain.abs().max()


def test_smoothgrad_sigma_is_noise_level_times_each_samples_range():
    x = torch.stack([torch.linspace(-1.0, 3.0, 12).view(1, 3, 4), torch.linspace(0.0, 0.5, 12).view(1, 3, 4)])
    assert noise_sigma(x, 0.1).flatten().tolist() == pytest.approx([0.4, 0.05])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_integrated_gradients_uses_captums_quadrature_points(scheme):
    """Same points as Captum; same weights except Captum's trapezoid (weights 1/n, summing to (n-1)/n)."""
    steps = 20
    ours = IntegratedGradients(torch.nn.Identity(), steps=steps, scheme=scheme)
    step_sizes, alphas = approximation_parameters(scheme)
    captum_points = torch.tensor(alphas(steps), dtype=torch.float64)
    captum_weights = torch.tensor(step_sizes(steps), dtype=torch.float64)
    assert torch.allclose(ours.points, captum_points, rtol=0, atol=1e-7)  # Captum rounds them to float32
    if scheme == "riemann_trapezoid":
        captum_weights = captum_weights * steps / (steps - 1)
    assert torch.allclose(ours.weights, captum_weights, rtol=0, atol=1e-12)
    assert ours.weights.sum().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    "case, scheme, fold",
    [("digits", scheme, False) for scheme in SCHEMES]
    + [("resnet18", "riemann_trapezoid", False), ("resnet18", "riemann_right", False)]
    + [("digits", "riemann_trapezoid", True), ("resnet18", "riemann_trapezoid", True)],
    indirect=["case"],
)
def test_integrated_gradients_equals_captum(case, scheme, fold):
    """Exact by construction: both sides evaluate the same function on the same points.

    Captum rounds its points to float32; a point moved by 1e-8 can cross a ReLU kink, so ours is given
    Captum's points (that the points agree is tested above). The constant baseline on the digits' zero
    background makes exact ReLU/MaxPool ties, which rounding breaks one way or the other depending on the
    CPU's kernels: so with ``fold_batchnorm=True`` Captum runs the same folded model, never the unfolded
    one (whose rounding differs). Every scheme on the bundled model; on ResNet18 the default and the paper's."""
    model, x, target = case
    steps = 12
    baseline = 0.1 * torch.ones_like(x[0])
    ours = IntegratedGradients(model, steps=steps, baseline=baseline, scheme=scheme, batch_size=10, fold_batchnorm=fold)
    ours.points = torch.tensor(approximation_parameters(scheme)[1](steps), dtype=torch.float64)
    attribution = ours(x, target=target).attribution
    reference_model = fold_batchnorm(model) if fold else model
    assert (reference_model is not model) == fold, "the models have BatchNorm: folding must make a copy"
    captum = CaptumIG(reference_model).attribute(
        x, baselines=baseline.expand_as(x), target=target, n_steps=steps, method=scheme
    )
    if scheme == "riemann_trapezoid":  # Captum's weights sum to (n-1)/n, ours to 1 (see xai.gradient.integrated_gradients)
        captum = captum * steps / (steps - 1)
    assert_relative_close(attribution, captum)


def completeness_error(model, x, steps, baseline=None):
    """max over samples of |sum(IG) - (f(x) - f(baseline))| / |f(x) - f(baseline)|."""
    expl = IntegratedGradients(model, steps=steps, baseline=baseline, batch_size=64)(x)
    reference = torch.zeros_like(x) if baseline is None else baseline.expand_as(x)
    with torch.no_grad():
        f_baseline = model(reference).gather(1, expl.target[:, None])[:, 0]
    difference = expl.output.gather(1, expl.target[:, None])[:, 0] - f_baseline
    assert difference.abs().min() > 1e-3, "f(x) = f(baseline): completeness would be trivially true"
    return ((expl.attribution.flatten(1).sum(1) - difference).abs() / difference.abs()).max().item()


def test_integrated_gradients_completeness_on_a_smooth_model():
    """Trapezoid error is O(1/steps^2) on smooth models: 64 steps must be within 1e-4."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(48, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32),
        torch.nn.Softplus(), torch.nn.Linear(32, 5),
    ).double()
    x = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    baseline = torch.full((3, 4, 4), -0.5, dtype=torch.float64)
    assert completeness_error(model, x, steps=64, baseline=baseline) < 1e-4


def test_integrated_gradients_completeness_on_the_bundled_relu_model(digits_model_f64, digits_batch):
    """ReLU/MaxPool kinks slow convergence; 256 steps are within 1 %, and more steps get closer."""
    x = digits_batch[0][:3].double()
    fine = completeness_error(digits_model_f64, x, steps=256)
    coarse = completeness_error(digits_model_f64, x, steps=8)
    assert fine < 1e-2
    assert fine < coarse
