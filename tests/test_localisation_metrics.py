"""The localisation metrics equal Quantus 0.6.0's on one-channel attributions (its defaults: normalised by the
batch's max, which none of them depends on), and score attributions whose answer is known. Float64; tolerance
1e-5 relative (the same sums in another order; AttributionLocalisation's 1e-9 is added after Quantus's
normalisation and before ours, a relative difference below 1e-7 here)."""
import numpy as np
import pytest
import quantus
import torch

from evaluation import AttributionLocalisation, PointingGame, RelevanceMassAccuracy, RelevanceRankAccuracy

PAIRS = [(PointingGame, quantus.PointingGame), (RelevanceMassAccuracy, quantus.RelevanceMassAccuracy),
         (RelevanceRankAccuracy, quantus.RelevanceRankAccuracy),
         (AttributionLocalisation, quantus.AttributionLocalisation)]


@pytest.fixture(scope="module")
def case(digits_batch):
    """Six digits, signed random attributions (no ties: continuous draws) and masks = the digit's strokes."""
    x = digits_batch[0].double()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    attribution = torch.cat([noise[:2], (x + 0.1 * noise)[2:]])  # noise, and relevance mostly on the strokes
    return x, attribution, x > 0.5


@pytest.mark.parametrize("ours, reference", PAIRS)
def test_equal_to_quantus(digits_model_f64, case, ours, reference):
    x, attribution, mask = case
    expected = reference(disable_warnings=True)(
        model=digits_model_f64, x_batch=x.numpy(), y_batch=np.zeros(len(x), dtype=int),
        a_batch=attribution.numpy().copy(), s_batch=mask.numpy().astype(float), channel_first=True)
    scores = ours()(digits_model_f64, x, attribution, None, mask=mask).scores
    np.testing.assert_allclose(scores.numpy(), np.asarray(expected, dtype=float), rtol=1e-5, atol=0)


def test_relevance_on_the_object_scores_one_and_off_it_zero():
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    mask[:, :, 2:4, 2:4] = True
    attribution = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    attribution[0, :, 2:4, 2:4] = 1.0  # all relevance on the object
    attribution[1, :, 6:8, 6:8] = 1.0  # all off it
    for metric in (PointingGame(), RelevanceMassAccuracy(), RelevanceRankAccuracy(), AttributionLocalisation()):
        assert metric(None, attribution, attribution, None, mask=mask).scores.tolist() == pytest.approx([1.0, 0.0])
    assert all(m.higher_is_better for m, _ in PAIRS)


def test_rank_accuracy_counts_the_share_of_the_top_pixels_on_the_object():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0, :] = True  # 4 object pixels
    relevance = torch.arange(16.0).flip(0).reshape(1, 4, 4)  # the first row holds the 4 largest values...
    relevance[0, 0, 3], relevance[0, 3, 3] = relevance[0, 3, 3].item(), relevance[0, 0, 3].item()  # ...but one
    assert RelevanceRankAccuracy()(None, relevance, relevance, None, mask=mask).scores.item() == pytest.approx(0.75)


def test_rank_accuracy_breaks_ties_at_the_cut_in_pixel_order_as_a_stable_sort():
    relevance = torch.tensor([[[5.0, 3.0, 3.0, 1.0]]])  # the top 2 are pixel 0 and the first 3.0 (pixel 1)
    mask = torch.tensor([[[True, False, True, False]]])
    assert RelevanceRankAccuracy()(None, relevance, relevance, None, mask=mask).scores.item() == 0.5
    mask = torch.tensor([[[False, True, True, False]]])  # top 2 = pixels 0, 1: one on the object
    assert RelevanceRankAccuracy()(None, relevance, relevance, None, mask=mask).scores.item() == 0.5
    mask = torch.tensor([[[True, True, False, False]]])
    assert RelevanceRankAccuracy()(None, relevance, relevance, None, mask=mask).scores.item() == 1.0


def test_an_empty_mask_scores_nan_where_quantus_pointing_game_scores_a_hit(digits_model_f64, case):
    x, attribution, mask = case
    empty = mask.clone()
    empty[0] = False
    for metric in (PointingGame(), RelevanceMassAccuracy(), RelevanceRankAccuracy(), AttributionLocalisation()):
        scores = metric(None, x, attribution, None, mask=empty).scores
        assert torch.isnan(scores[0]) and not torch.isnan(scores[1:]).any()
    # Quantus 0.6.0 writes NaN into a bool array, which stores True: an empty mask counts as a hit
    quantus_scores = quantus.PointingGame(disable_warnings=True)(
        model=digits_model_f64, x_batch=x.numpy(), y_batch=np.zeros(len(x), dtype=int),
        a_batch=attribution.numpy().copy(), s_batch=empty.numpy().astype(float), channel_first=True)
    assert quantus_scores[0] == 1


def test_a_mask_that_does_not_fit_names_the_shapes():
    attribution = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"mask of shape \(2, 7, 8\) does not fit .* \(2, 8, 8\)"):
        PointingGame()(None, attribution, attribution, None, mask=torch.zeros(2, 7, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="one channel"):
        PointingGame()(None, attribution, attribution, None, mask=torch.zeros(2, 3, 8, 8, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        PointingGame()(None, attribution, attribution, None, mask=np.zeros((2, 8, 8)))
