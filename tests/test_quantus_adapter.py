"""The Quantus adapter: results equal the published formulas (Complexity, Sparseness) and direct Quantus calls;
broken, unknown and failing metrics give a QuantusMetricError naming the metric, and never stop the others.

Tolerances: 1e-6 relative for the entropy and Gini formulas (Quantus adds 1e-12 / 1e-7 to the attributions);
exact equality against direct Quantus calls with the same seed.
"""
import numpy as np
import pytest
import quantus
import torch

from evaluation import KNOWN_BROKEN, QuantusMetric, QuantusMetricError, evaluate_quantus
from xai import Gradient


@pytest.fixture
def explained(digits_model, digits_batch):
    x, labels = digits_batch
    return digits_model, x, Gradient(digits_model)(x, labels).attribution, labels


def test_complexity_is_the_entropy_of_the_attribution_shares(explained):
    model, x, attribution, labels = explained
    scores = QuantusMetric("Complexity")(model, x, attribution, labels)
    share = attribution.abs().flatten(1).double()
    share = share / share.sum(1, keepdim=True)
    entropy = -(share * torch.log(share + 1e-12)).sum(1)
    assert scores.shape == (len(x),)
    torch.testing.assert_close(scores, entropy, rtol=1e-6, atol=0)


def test_sparseness_is_the_gini_index_of_the_absolute_attribution(explained):
    model, x, attribution, labels = explained
    scores = QuantusMetric("Sparseness")(model, x, attribution, labels)
    a = torch.sort(attribution.abs().flatten(1).double(), dim=1).values
    n = a.shape[1]
    k = torch.arange(1, n + 1, dtype=torch.float64)
    gini = ((2 * k - n - 1) * a).sum(1) / (n * a.sum(1))
    torch.testing.assert_close(scores, gini, rtol=1e-5, atol=0)


def test_max_sensitivity_with_our_explainer_equals_a_direct_quantus_call(explained):
    model, x, attribution, labels = explained
    ours = QuantusMetric("MaxSensitivity", nr_samples=4)(model, x, attribution, labels, explainer=Gradient, seed=3)

    def explain(model, inputs, targets, **kwargs):
        return Gradient(model)(torch.as_tensor(inputs), torch.as_tensor(targets)).attribution.numpy()

    np.random.seed(3)
    direct = quantus.MaxSensitivity(nr_samples=4, disable_warnings=True, display_progressbar=False)(
        model=model, x_batch=x.numpy(), y_batch=labels.numpy(), a_batch=attribution.numpy(),
        explain_func=explain, channel_first=True, device="cpu",
    )
    torch.testing.assert_close(ours, torch.tensor(direct, dtype=torch.float64), rtol=0, atol=0)
    assert (ours > 0).all()
    again = QuantusMetric("MaxSensitivity", nr_samples=4)(model, x, attribution, labels, explainer=Gradient, seed=3)
    assert torch.equal(again, ours)


@pytest.mark.parametrize("name", sorted(KNOWN_BROKEN))
def test_known_broken_metrics_are_refused_with_the_reason(name):
    with pytest.raises(QuantusMetricError, match=f"'{name}': refused, known to be broken") as info:
        QuantusMetric(name)
    assert info.value.metric == name
    assert KNOWN_BROKEN[name] in str(info.value)


def test_unknown_metric_suggests_the_close_name():
    with pytest.raises(QuantusMetricError, match="'Sparsenes': no such metric .* did you mean Sparseness"):
        QuantusMetric("Sparsenes")


def test_failing_metric_names_itself_and_the_cause(explained):
    model, x, attribution, labels = explained
    with pytest.raises(QuantusMetricError, match="'MaxSensitivity': failed .* pass explainer="):
        QuantusMetric("MaxSensitivity", nr_samples=2)(model, x, attribution, labels)
    with pytest.raises(QuantusMetricError, match="'PixelFlipping': failed .* np.trapz"):
        QuantusMetric("PixelFlipping", features_in_step=256, return_auc_per_sample=True)(model, x, attribution, labels)


def test_dataset_level_result_is_rejected(explained):
    model, x, attribution, labels = explained
    with pytest.raises(QuantusMetricError, match="returned \\(1,\\) values for 6 samples"):
        QuantusMetric("Complexity", return_aggregate=True)(model, x, attribution, labels)


def test_one_failure_does_not_stop_the_others(explained):
    model, x, attribution, labels = explained
    with pytest.warns(UserWarning, match="Monotonicity"):
        scores, failures = evaluate_quantus(
            {"Sparseness": {}, "Monotonicity": {}, "PixelFlipping": {"features_in_step": 256}},
            model, x, attribution, labels,
        )
    assert set(scores) == {"Sparseness", "PixelFlipping"} and set(failures) == {"Monotonicity"}
    assert scores["PixelFlipping"].shape == (len(x), 4)  # the curve: 1024 / 256 steps
    assert "known to be broken" in failures["Monotonicity"]


def test_training_model_is_evaluated_in_eval_mode_and_restored(explained):
    model, x, attribution, labels = explained
    model.train()
    try:
        scores = QuantusMetric("PixelFlipping", features_in_step=512)(model, x, attribution, labels)
        assert model.training
    finally:
        model.eval()
    assert torch.equal(scores, QuantusMetric("PixelFlipping", features_in_step=512)(model, x, attribution, labels))
