"""Bad input to the Python API: one clear error, raised before any computation, that names the problem and the fix.

Every analyzer and PixelFlipping get the same input checks (xai.validation), so each case runs against all of them.
"""
import pytest
import torch
from torch import nn

from evaluation import PixelFlipping
from xai import LRP, Gradient, InputTimesGradient, IntegratedGradients, SmoothGrad, UnsupportedModelError
from xai.lrp.composites import EpsilonGammaBox

CALLERS = {
    "Gradient": lambda m, x: Gradient(m)(x),
    "InputTimesGradient": lambda m, x: InputTimesGradient(m)(x),
    "SmoothGrad": lambda m, x: SmoothGrad(m, samples=2, seed=0)(x),
    "IntegratedGradients": lambda m, x: IntegratedGradients(m, steps=3)(x),
    "LRP": lambda m, x: LRP(m)(x),
    "PixelFlipping": lambda m, x: PixelFlipping(steps=2)(m, x, torch.ones_like(x), 0),
}


@pytest.fixture(params=list(CALLERS))
def explain(request):
    return CALLERS[request.param]


class Returning(nn.Module):
    """A small CNN whose forward wraps the logits as given (a tuple, a dict, a softmax)."""

    def __init__(self, wrap):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
        self.wrap = wrap

    def forward(self, x):
        return self.wrap(self.body(x))


def small_cnn() -> nn.Module:
    return Returning(lambda logits: logits).eval()


def test_an_empty_batch_is_refused_by_every_method(explain):
    with pytest.raises(ValueError, match=r"input holds no samples \(shape \(0, 1, 8, 8\)\): give at least one"):
        explain(small_cnn(), torch.rand(0, 1, 8, 8))


@pytest.mark.parametrize("wrap, message", [
    (lambda z: (z, z), r"the model returns a tuple of 2; analyzers need one tensor of logits .*model\(x\)\[0\]"),
    (lambda z: {"logits": z}, r"the model returns a dict with keys \['logits'\]"),
])
def test_a_model_returning_a_tuple_or_dict_says_how_to_wrap_it(explain, wrap, message):
    with pytest.raises(TypeError, match=message):
        explain(Returning(wrap).eval(), torch.rand(2, 1, 8, 8))


def test_a_model_that_outputs_probabilities_is_refused(explain):
    model = Returning(lambda z: z.softmax(dim=1)).eval()
    with pytest.raises(ValueError, match="softmax.*explanations are taken on logits"):  # LRP: its own model check
        explain(model, torch.rand(2, 1, 8, 8))


def test_an_image_without_batch_dimension_names_the_fix(explain):
    with pytest.raises(ValueError, match=r"shape \(1, 8, 8\), one sample without the batch dimension: the model's "
                                         r"first layer body.0 \(Conv2d, in_channels=1\).*x.unsqueeze\(0\)"):
        explain(small_cnn(), torch.rand(1, 8, 8))


def test_rgb_into_a_grey_model_names_the_channels_and_grayscale(explain):
    with pytest.raises(ValueError, match=r"input has 3 channels \(shape \(2, 3, 8, 8\)\), but the model's first "
                                         r"layer body.0 .* takes 1 .*Grayscale\(num_output_channels=1\)"):
        explain(small_cnn(), torch.rand(2, 3, 8, 8))


def test_a_dtype_mismatch_names_both_dtypes(explain):
    with pytest.raises(TypeError, match=r"input has dtype torch.float64, but the model's first layer .* has dtype "
                                        r"torch.float32: convert one"):
        explain(small_cnn(), torch.rand(2, 1, 8, 8, dtype=torch.float64))


def test_another_image_size_leads_with_the_input_shape(explain):
    with pytest.raises(ValueError, match=r"the model cannot run on inputs of shape \(\d+, 1, 9, 9\).*first layer is "
                                         r"body.0.*does it expect another image size\?"):
        explain(small_cnn(), torch.rand(2, 1, 9, 9))


@pytest.mark.parametrize("make, error, message", [
    (lambda m: IntegratedGradients(m, baseline=float("nan")), ValueError, "baseline must be finite, got nan"),
    (lambda m: IntegratedGradients(m, baseline=float("inf")), ValueError, "baseline must be finite, got inf"),
    (lambda m: IntegratedGradients(m, baseline=torch.full((1, 8, 8), float("inf"))), ValueError,
     "baseline contains NaN or Inf values"),
    (lambda m: IntegratedGradients(m, baseline="zeros"), TypeError, "baseline must be None, a number or a Tensor"),
    (lambda m: SmoothGrad(m, noise_level=float("inf")), ValueError, "noise_level .* must be finite, got inf"),
    (lambda m: SmoothGrad(m, noise_level="0.1"), TypeError, "noise_level .* must be a number, got '0.1'"),
])
def test_non_finite_baselines_and_noise_are_refused_at_construction(make, error, message):
    with pytest.raises(error, match=message):
        make(small_cnn())


def test_a_zbox_bound_of_the_wrong_shape_names_the_layer_and_the_shape_to_give():
    # (3,) lines up with the image width, not the channels: refused before any computation
    composite = EpsilonGammaBox(low=torch.zeros(3), high=torch.ones(3))
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2)).eval()
    with pytest.raises(UnsupportedModelError, match=r"0 \(Conv2d\): ZBoxRule.*low has shape \(3,\), which does not "
                                                    r"line up .* 3 channels: .* shape \(1, 3, 1, 1\)"):
        LRP(model, composite=composite)(torch.rand(2, 3, 3, 3))
    per_channel = EpsilonGammaBox(low=torch.zeros(1, 3, 1, 1), high=torch.ones(1, 3, 1, 1))
    assert LRP(model, composite=per_channel)(torch.rand(2, 3, 3, 3)).attribution.shape == (2, 3, 3, 3)


def test_a_rules_path_that_matches_no_module_names_the_closest_paths():
    model = small_cnn()
    with pytest.raises(ValueError, match=r"rules\['bod.0'\]: the model has no module at path 'bod.0'; closest: "
                                         r"body.0,"):
        LRP(model, rules={"bod.0": EpsilonGammaBox().entries[0].rule})
    with pytest.raises(ValueError, match=r"rules\[Conv2d\(...\)\]: that module is not part of the model"):
        LRP(model, rules={nn.Conv2d(1, 2, 3): EpsilonGammaBox().entries[0].rule})
