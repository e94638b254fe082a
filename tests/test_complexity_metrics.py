"""Sparseness and Complexity equal Quantus 0.6.0's (same defaults: normalised by the max, absolute values), and
behave as their definitions say on attributions whose answer is known. Float64; tolerance 1e-5 relative (the same
operations in another order)."""
import math

import numpy as np
import pytest
import quantus
import torch

from evaluation import Complexity, Sparseness


@pytest.fixture(scope="module")
def attributions(digits_batch):
    x = digits_batch[0].double()
    mixed = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return x, torch.cat([mixed[:3], (x * mixed)[3:]])  # signed noise, and noise on the digit's strokes only


@pytest.mark.parametrize("ours, reference", [(Sparseness, quantus.Sparseness), (Complexity, quantus.Complexity)])
def test_equal_to_quantus(digits_model_f64, attributions, ours, reference):
    x, attribution = attributions
    y = np.zeros(len(x), dtype=int)
    expected = reference(disable_warnings=True)(model=digits_model_f64, x_batch=x.numpy(), y_batch=y,
                                                a_batch=attribution.numpy().copy(), channel_first=True)
    scores = ours()(digits_model_f64, x, attribution, None).scores
    np.testing.assert_allclose(scores.numpy(), np.asarray(expected), rtol=1e-5, atol=0)


def test_a_one_hot_attribution_is_the_sparsest_and_the_least_complex():
    n = 32 * 32
    one_hot = torch.zeros(3, 1, 32, 32, dtype=torch.float64)
    one_hot[0, 0, 5, 7] = 2.0
    one_hot[1] = 1.0  # uniform
    one_hot[2] = torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gini = Sparseness()(None, one_hot, one_hot).scores
    entropy = Complexity()(None, one_hot, one_hot).scores
    # (n - 1) / n but for the 1e-7 added to every value: (n - 1) / (n (1 + n 1e-7)) exactly
    assert gini[0] == pytest.approx((n - 1) / (n * (1 + n * 1e-7)), rel=1e-12) and gini[1] == pytest.approx(0, abs=1e-12)
    assert gini[0] > gini[2] > gini[1]
    assert entropy[0] == pytest.approx(0, abs=1e-9) and entropy[1] == pytest.approx(math.log(n), rel=1e-6)
    assert entropy[0] < entropy[2] < entropy[1]
    assert Sparseness.higher_is_better and not Complexity.higher_is_better


def test_an_all_zero_attribution_counts_as_uniform_not_nan():
    zero = torch.zeros(2, 3, 4, 4)
    assert torch.allclose(Complexity()(None, zero, zero).scores, torch.full((2,), math.log(48)))
    assert torch.allclose(Sparseness()(None, zero, zero).scores, torch.zeros(2), atol=1e-6)
    with pytest.raises(ValueError, match="NaN or Inf"):
        Sparseness()(None, zero, torch.full((2, 3, 4, 4), float("nan")))


def test_rank_methods_ranks_each_metric_in_its_direction_and_orders_by_mean_rank():
    from evaluation import rank_methods

    table = rank_methods({
        "lrp": {"SymmetricRelevanceGain": 0.6, "Sparseness": 0.7, "Complexity": 5.0},
        "gradient": {"SymmetricRelevanceGain": 0.3, "Sparseness": 0.5, "Complexity": 6.0},
        "occlusion": {"SymmetricRelevanceGain": 0.5, "Sparseness": 0.2, "Complexity": 4.0},
    })
    assert list(table.index) == ["lrp", "occlusion", "gradient"]
    assert table.loc["occlusion", "Complexity rank"] == 1  # lower entropy is better
    assert table.loc["lrp", "mean rank"] == pytest.approx((1 + 1 + 2) / 3)
    with pytest.raises(ValueError, match="'Accuracy' is not a metric of evaluation with a declared direction"):
        rank_methods({"lrp": {"Accuracy": 1.0}})
    assert list(rank_methods({"a": {"x": 1.0}, "b": {"x": 2.0}}, directions={"x": False}).index) == ["a", "b"]
