"""Target forms, batch consistency and clear errors for bad input, for every gradient analyzer."""
import pytest
import torch

from xai import Gradient, InputTimesGradient, IntegratedGradients, SmoothGrad, analyze

ANALYZERS = {
    "Gradient": lambda m: Gradient(m),
    "InputTimesGradient": lambda m: InputTimesGradient(m),
    "SmoothGrad": lambda m: SmoothGrad(m, samples=3, noise_level=0.2, seed=3, batch_size=8),
    "IntegratedGradients": lambda m: IntegratedGradients(m, steps=3, batch_size=8),
}


@pytest.fixture(params=list(ANALYZERS))
def make(request):
    return ANALYZERS[request.param]


def per_sample(analyzer, x, target):
    """Explain each sample on its own and stack the attributions."""
    return torch.cat([analyzer(x[i : i + 1], target=target[i : i + 1]).attribution for i in range(len(x))])


def test_default_target_is_each_samples_top_class(make, digits_model, digits_batch):
    x = digits_batch[0]
    expl = make(digits_model)(x)
    with torch.no_grad():
        logits = digits_model(x)
    assert torch.equal(expl.target, logits.argmax(dim=1))
    torch.testing.assert_close(expl.output, logits)
    assert expl.attribution.shape == x.shape and not expl.attribution.requires_grad
    assert expl.method == type(make(digits_model)).__name__


def test_every_target_form_selects_the_same_classes(make, digits_model, digits_batch):
    x = digits_batch[0]
    analyzer = make(digits_model)
    n = len(x)
    by_int = analyzer(x, target=4)
    by_tensor = analyzer(x, target=torch.full((n,), 4))
    by_scalar_tensor = analyzer(x, target=torch.tensor(4))
    by_analyze = analyze(x, analyzer, target=4)
    assert torch.equal(by_int.target, torch.full((n,), 4))
    for other in (by_tensor, by_scalar_tensor, by_analyze):
        assert torch.equal(other.target, by_int.target)
        torch.testing.assert_close(other.attribution, by_int.attribution, rtol=0, atol=0)
    mixed = torch.tensor([0, 1, 2, 3, 4, 5])
    assert torch.equal(analyzer(x, target=mixed).target, mixed)


def test_per_sample_targets_explain_different_classes(make, digits_model, digits_batch):
    x = digits_batch[0]
    analyzer = make(digits_model)
    a = analyzer(x, target=torch.tensor([1, 1, 1, 1, 1, 1])).attribution
    b = analyzer(x, target=torch.tensor([1, 7, 1, 7, 1, 7])).attribution
    torch.testing.assert_close(a[0::2], b[0::2])
    assert not torch.allclose(a[1::2], b[1::2])


def test_batch_results_equal_per_sample_results(make, digits_model, digits_batch):
    x = digits_batch[0]
    target = torch.tensor([3, 1, 4, 1, 5, 9])
    analyzer = make(digits_model)
    batch = analyzer(x, target=target).attribution
    torch.testing.assert_close(batch, per_sample(analyzer, x, target), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["SmoothGrad", "IntegratedGradients"])
def test_results_do_not_depend_on_batch_size(method, digits_model, digits_batch):
    """4 (below N = 6), 5 (not a divisor of the total) and 1000 (everything at once) inputs per forward/backward."""
    x = digits_batch[0]
    results = []
    for batch_size in (4, 5, 1000):
        if method == "SmoothGrad":
            analyzer = SmoothGrad(digits_model, samples=3, seed=11, batch_size=batch_size)
        else:
            analyzer = IntegratedGradients(digits_model, steps=3, batch_size=batch_size)
        results.append(analyzer(x).attribution)
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-5, atol=1e-6)


def test_batch_size_bounds_the_inputs_per_forward(digits_model, digits_batch):
    seen = []
    handle = digits_model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    try:
        SmoothGrad(digits_model, samples=30, seed=0, batch_size=16)(digits_batch[0])
        assert max(seen) <= 16 and sum(seen) == 6 * 30 + 6  # noisy copies + one clean forward
        seen.clear()
        IntegratedGradients(digits_model, steps=20, batch_size=7)(digits_batch[0])
        assert max(seen) <= 7 and sum(seen) == 6 * 20 + 6
    finally:
        handle.remove()


def test_smoothgrad_seed_reproduces_and_varies(digits_model, digits_batch):
    x = digits_batch[0]
    a = SmoothGrad(digits_model, samples=4, seed=1)(x).attribution
    b = SmoothGrad(digits_model, samples=4, seed=1)(x).attribution
    c = SmoothGrad(digits_model, samples=4, seed=2)(x).attribution
    assert torch.equal(a, b) and not torch.allclose(a, c)
    torch.manual_seed(5)
    d = SmoothGrad(digits_model, samples=4)(x).attribution
    torch.manual_seed(5)
    assert torch.equal(SmoothGrad(digits_model, samples=4)(x).attribution, d)  # seed=None follows torch's RNG


def test_integrated_gradients_baseline_forms(digits_model, digits_batch):
    x = digits_batch[0]
    zeros = IntegratedGradients(digits_model, steps=6)(x).attribution
    explicit = IntegratedGradients(digits_model, steps=6, baseline=torch.zeros(1, 32, 32))(x).attribution
    number = IntegratedGradients(digits_model, steps=6, baseline=0.0)(x).attribution
    torch.testing.assert_close(explicit, zeros, rtol=0, atol=0)
    torch.testing.assert_close(number, zeros, rtol=0, atol=0)
    per_sample_baseline = torch.rand_like(x)
    shifted = IntegratedGradients(digits_model, steps=6, baseline=per_sample_baseline)(x).attribution
    assert not torch.allclose(shifted, zeros)
    assert IntegratedGradients(digits_model, steps=6, baseline=x)(x).attribution.abs().max() == 0  # x - x = 0


def test_target_out_of_range_is_a_clear_error(make, digits_model, digits_batch):
    with pytest.raises(ValueError, match=r"target \[10\] out of range: the model has 10 classes \(0\.\.9\)"):
        make(digits_model)(digits_batch[0], target=10)
    with pytest.raises(ValueError, match="out of range"):
        make(digits_model)(digits_batch[0], target=torch.tensor([0, 1, 2, -1, 4, 5]))


def test_target_tensor_of_wrong_length_is_a_clear_error(make, digits_model, digits_batch):
    with pytest.raises(ValueError, match=r"target has shape \(4,\) but the batch has 6 samples"):
        make(digits_model)(digits_batch[0], target=torch.arange(4))


def test_float_target_is_a_clear_error(make, digits_model, digits_batch):
    with pytest.raises(TypeError, match="integer class indices"):
        make(digits_model)(digits_batch[0], target=torch.zeros(6))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_a_clear_error(make, digits_model, digits_batch, bad):
    x = digits_batch[0].clone()
    x[2, 0, 5, 5] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        make(digits_model)(x)


def test_input_without_batch_dimension_or_integer_input_is_a_clear_error(make, digits_model):
    with pytest.raises(ValueError, match="batch dimension"):
        make(digits_model)(torch.rand(32))
    with pytest.raises(TypeError, match="x.float()"):
        make(digits_model)(torch.zeros(2, 1, 32, 32, dtype=torch.long))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda m: SmoothGrad(m, samples=0), "samples must be a positive int"),
        (lambda m: SmoothGrad(m, noise_level=-0.1), "noise_level .* must be >= 0"),
        (lambda m: SmoothGrad(m, batch_size=0), "batch_size must be a positive int"),
        (lambda m: IntegratedGradients(m, steps=0), "steps must be a positive int"),
        (lambda m: IntegratedGradients(m, steps=1), "riemann_trapezoid needs steps >= 2"),
        (lambda m: IntegratedGradients(m, scheme="simpson"), "unknown scheme 'simpson': choose one of"),
        (lambda m: IntegratedGradients(m, batch_size=2.5), "batch_size must be a positive int"),
    ],
)
def test_bad_settings_are_clear_errors(build, message, digits_model):
    with pytest.raises(ValueError, match=message):
        build(digits_model)


def test_baseline_of_wrong_shape_is_a_clear_error(digits_model, digits_batch):
    with pytest.raises(ValueError, match=r"baseline has shape \(3, 32, 32\).*give one of shape"):
        IntegratedGradients(digits_model, baseline=torch.zeros(3, 32, 32))(digits_batch[0])
    with pytest.raises(ValueError, match="baseline contains NaN"):
        IntegratedGradients(digits_model, baseline=torch.full((1, 32, 32), float("nan")))(digits_batch[0])


def test_model_without_class_scores_is_a_clear_error(make):
    with pytest.raises(ValueError, match=r"logits of shape \(N, classes\)"):
        make(torch.nn.Conv2d(1, 2, 3))(torch.rand(2, 1, 8, 8))
