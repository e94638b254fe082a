"""Occlusion equals Captum's; GradCAM, GradCAM++, LayerCAM and ScoreCAM equal pytorch-grad-cam's on the same layer.

Float64 models. Occlusion: max |ours - Captum| <= 1e-5 x max |Captum| (the same deltas, summed in another order).
CAMs: pytorch-grad-cam min-max scales each map and resizes it with cv2 in float32 (ScoreCAM also keeps its scores in
float32), so ours is compared after the same scaling, to 1e-5 absolute on maps in [0, 1] (float32's resolution at 1
is 6e-8; cv2's bilinear weights are float32 too).
"""
import numpy as np
import pytest
import torch
from captum.attr import Occlusion as CaptumOcclusion
from pytorch_grad_cam import GradCAM as RefGradCAM
from pytorch_grad_cam import GradCAMPlusPlus as RefGradCAMPlusPlus
from pytorch_grad_cam import LayerCAM as RefLayerCAM
from pytorch_grad_cam import ScoreCAM as RefScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from xai import GradCAM, GradCAMPlusPlus, LayerCAM, Occlusion, ScoreCAM
from xai.cam import default_layer

CAMS = {"GradCAM": (GradCAM, RefGradCAM), "GradCAMPlusPlus": (GradCAMPlusPlus, RefGradCAMPlusPlus),
        "LayerCAM": (LayerCAM, RefLayerCAM), "ScoreCAM": (ScoreCAM, RefScoreCAM)}


#: Occlusion windows (window, stride, baseline) per model: one tiling the image evenly, one cropped at the border.
WINDOWS = {"digits": [(8, 4, 0.0), (6, 4, 0.5)], "resnet18": [(32, 16, 0.0), (24, 16, 0.5)]}


@pytest.fixture(params=["digits", "resnet18"])
def case(request, digits_model_f64, digits_batch, resnet18_model_f64, resnet_input):
    if request.param == "digits":
        return digits_model_f64, digits_batch[0].double(), "0.13", WINDOWS["digits"]
    return resnet18_model_f64, resnet_input.double(), "layer4.1", WINDOWS["resnet18"]


def assert_relative_close(ours, reference, rtol=1e-5):
    error = (ours - reference).abs().max().item()
    scale = reference.abs().max().item()
    assert error <= rtol * scale, f"max abs error {error:.3e} > {rtol} * {scale:.3e}"


@pytest.mark.parametrize("tiling", [0, 1], ids=["even", "cropped-edge"])
def test_occlusion_equals_captum(case, tiling):
    model, x, _, windows = case
    window, stride, baseline = windows[tiling]
    ours = Occlusion(model, window=window, stride=stride, baseline=baseline, batch_size=37)(x)
    channels = x.shape[1]
    reference = CaptumOcclusion(model).attribute(x, sliding_window_shapes=(channels, window, window),
                                                 strides=(channels, stride, stride), baselines=baseline,
                                                 target=ours.target, perturbations_per_eval=16)
    assert ours.attribution.shape == x.shape
    assert_relative_close(ours.attribution, reference)


def minmax(maps: torch.Tensor) -> np.ndarray:
    """pytorch-grad-cam's scaling of each map: (m - min) / (max + 1e-7)."""
    flat = maps.flatten(1)
    low = flat.min(1).values[:, None, None]
    shifted = maps - low
    return (shifted / (shifted.flatten(1).max(1).values[:, None, None] + 1e-7)).numpy()


@pytest.mark.parametrize("name", list(CAMS))
def test_cams_equal_pytorch_grad_cam_on_the_same_layer(case, name):
    model, x, layer, _ = case
    ours_class, reference_class = CAMS[name]
    if name == "ScoreCAM" and layer == "layer4.1":  # one forward pass per channel: 64 channels, one image
        x, layer = x[:1], "layer1.1"
    ours = ours_class(model, layer=layer)(x)
    assert ours.attribution.shape == x.shape and (ours.attribution >= 0).all()
    assert torch.equal(ours.attribution[:, :1].expand_as(x), ours.attribution)  # one map, every channel
    target_layer = dict(model.named_modules())[layer]
    with reference_class(model=model, target_layers=[target_layer]) as reference:
        expected = reference(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in ours.target])
    np.testing.assert_allclose(minmax(ours.attribution[:, 0]), expected, rtol=0, atol=1e-5)


def test_the_default_layer_is_the_last_convolutional_block(digits_model, resnet18_model):
    from torchvision.models import vgg11

    assert default_layer(resnet18_model) == "layer4.1" and default_layer(digits_model) == "0.13"
    assert default_layer(vgg11()) == "features.20"  # the last MaxPool of the conv stack
    assert GradCAM(digits_model).method == "GradCAM(0.13)"


def test_bad_layers_and_windows_are_clear_errors(digits_model, digits_batch):
    with pytest.raises(ValueError, match=r"layer='0.31': the model has no module at path '0.31'; closest: .*0.13"):
        GradCAM(digits_model, layer="0.31")
    with pytest.raises(ValueError, match=r"layer='1.1' gives \(6, 64\), not feature maps"):
        GradCAM(digits_model, layer="1.1")(digits_batch[0])
    with pytest.raises(ValueError, match="has no Conv2d block for a CAM"):
        GradCAM(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="stride=5 is larger than window=4"):
        Occlusion(digits_model, window=4, stride=5)
    with pytest.raises(ValueError, match="window=40 is larger than the 32x32 image"):
        Occlusion(digits_model, window=40, stride=4)(digits_batch[0])
