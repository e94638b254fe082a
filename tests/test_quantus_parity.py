"""Our PixelFlipping(unit="channel") against quantus.PixelFlipping 0.6.0 on the same model, inputs and attributions.

Tolerance 1e-5 (absolute, on probabilities and logits of order 1-10): both run the same float32 forward passes,
the only differences are float32 vs numpy round trips and batch composition of the forwards.
Attributions are random normal draws (no ties: Quantus sorts with numpy's unstable quicksort).
"""
import numpy as np
import pytest
import quantus
import torch

from evaluation import PixelFlipping

TOLERANCE = 1e-5


def quantus_curve(model, x, attribution, target, features_in_step, baseline, softmax):
    metric = quantus.PixelFlipping(
        features_in_step=features_in_step, perturb_baseline=baseline, normalise=False,
        return_auc_per_sample=False, disable_warnings=True, display_progressbar=False,
    )
    scores = metric(
        model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=attribution.numpy(),
        channel_first=True, softmax=softmax, device="cpu", batch_size=len(x),
    )
    return torch.tensor(np.asarray(scores), dtype=torch.float32)


@pytest.fixture(params=["grayscale", "rgb"])
def case(request, digits_model, digits_batch, resnet18_model, resnet_input):
    """(model, x, target, features_in_step): the bundled digits CNN, or a random ResNet18 on 2x3x64x64."""
    if request.param == "grayscale":
        x, labels = digits_batch
        return digits_model, x, labels, 64
    with torch.no_grad():
        top = resnet18_model(resnet_input).argmax(1)
    return resnet18_model, resnet_input, top, 1024


@pytest.mark.parametrize("softmax", [True, False], ids=["softmax", "logit"])
def test_channel_unit_curve_equals_quantus(case, softmax):
    model, x, target, features_in_step = case
    generator = torch.Generator().manual_seed(1)
    attribution = torch.randn(x.shape, generator=generator)
    baseline = 0.25

    expected = quantus_curve(model, x, attribution, target, features_in_step, baseline, softmax)
    ours = PixelFlipping(features_in_step=features_in_step, baseline=baseline, unit="channel", softmax=softmax,
                         batch_size=40, progress=False)(model, x, attribution, target)

    assert expected.shape == (len(x), x[0].numel() // features_in_step)
    assert ours.curve.shape == (len(x), expected.shape[1] + 1)
    torch.testing.assert_close(ours.curve[:, 1:], expected, atol=TOLERANCE, rtol=0)
    # the curve must actually move, or equality proves nothing
    assert (expected.amax(1) - expected.amin(1)).min() > 0.1 * expected.abs().amax(1).min()

