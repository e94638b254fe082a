"""Every method on an exported graph (``torch.export``, MLflow's pt2 format) equals the method on the original module.

``xai.from_exported`` rebuilds the layer ops of the graph as torch.nn modules that hold the exported tensors, so both
sides run the same aten ops on the same tensors in the same order: the comparisons are exact (``torch.equal``), not
within a tolerance.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

from xai import (LRP, DeepLIFT, GradCAM, Gradient, IntegratedGradients, LayerCAM, Occlusion, PatternAttribution,
                 fit_patterns)
from xai.exported import ExportedBlock, from_exported
from xai.lrp.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlus
from xai.lrp.rules import AlphaBetaRule, EpsilonRule


def exported(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """What MLflow's pt2 format stores and loads back (a dynamic batch), rebuilt."""
    program = torch.export.export(model, (x[:2],), dynamic_shapes=[{0: Dim.AUTO}])
    return from_exported(program)


@pytest.fixture(scope="module")
def digits_exported(digits_model, digits_batch):
    return exported(digits_model, digits_batch[0])


@pytest.fixture(scope="module")
def resnet_exported(resnet18_model, resnet_input):
    return exported(resnet18_model, resnet_input)


ANALYZERS = {
    "gradient": lambda m: Gradient(m),
    "integrated_gradients": lambda m: IntegratedGradients(m, steps=4),
    "lrp_epsilon_gamma_box": lambda m: LRP(m, composite=EpsilonGammaBox(low=0.0, high=1.0)),
    "lrp_epsilon_plus": lambda m: LRP(m, composite=EpsilonPlus()),
    "lrp_alpha2_beta1": lambda m: LRP(m, composite=EpsilonAlpha2Beta1()),
    "grad_cam_default_layer": lambda m: GradCAM(m),
    "layer_cam": lambda m: LayerCAM(m),
    "deeplift": lambda m: DeepLIFT(m),
    "occlusion": lambda m: Occlusion(m, window=8, stride=8),
}


@pytest.mark.parametrize("name", list(ANALYZERS))
def test_every_method_on_the_exported_digits_cnn_equals_the_original(name, digits_model, digits_exported,
                                                                       digits_batch):
    x = digits_batch[0][:6]  # another batch size than the export's example: the batch is dynamic
    expected, got = ANALYZERS[name](digits_model)(x), ANALYZERS[name](digits_exported)(x)
    assert torch.equal(got.output, expected.output)
    assert torch.equal(got.attribution, expected.attribution)
    assert expected.attribution.abs().max() > 0


@pytest.mark.parametrize("name", ["lrp_epsilon_plus", "grad_cam_default_layer", "deeplift"])
def test_methods_on_an_exported_resnet18_with_residual_sums_equal_the_original(name, resnet18_model, resnet_exported,
                                                                              resnet_input):
    expected, got = ANALYZERS[name](resnet18_model)(resnet_input), ANALYZERS[name](resnet_exported)(resnet_input)
    assert torch.equal(got.attribution, expected.attribution)


def test_layers_keep_their_paths_so_rules_and_cam_layers_by_path_mean_the_same(resnet18_model, resnet_exported,
                                                                               resnet_input):
    original = dict(resnet18_model.named_modules())
    rebuilt = dict(resnet_exported.named_modules())
    for path, module in original.items():
        if not list(module.children()) and not isinstance(module, nn.Identity):
            assert type(rebuilt[path]) is type(module), path
            for name, tensor in module.named_parameters(recurse=False):
                assert getattr(rebuilt[path], name) is not None and torch.equal(getattr(rebuilt[path], name), tensor)
    assert isinstance(rebuilt["layer4"], ExportedBlock)
    rules = {"layer4.1.conv2": AlphaBetaRule(alpha=1.0, beta=0.0), "fc": EpsilonRule(epsilon=0.1)}
    expected = LRP(resnet18_model, composite=EpsilonPlus(), rules=rules)(resnet_input).attribution
    got = LRP(resnet_exported, composite=EpsilonPlus(), rules=rules)(resnet_input).attribution
    assert torch.equal(got, expected)
    assert not torch.equal(got, LRP(resnet_exported, composite=EpsilonPlus())(resnet_input).attribution)
    layer = GradCAM(resnet18_model, layer="layer3")(resnet_input).attribution
    assert torch.equal(GradCAM(resnet_exported, layer="layer3")(resnet_input).attribution, layer)


def test_pattern_attribution_fits_the_same_patterns_on_the_exported_graph(digits_model, digits_exported,
                                                                          digits_batch):
    x = digits_batch[0][:16]
    patterns, rebuilt_patterns = (fit_patterns(m, [x], progress=False) for m in (digits_model, digits_exported))
    expected = PatternAttribution(digits_model, patterns)(x[:4]).attribution
    assert torch.equal(PatternAttribution(digits_exported, rebuilt_patterns)(x[:4]).attribution, expected)


class Functional(nn.Module):
    """Functional ops in forward: F.relu, a spatial mean and an in-place residual sum."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.conv(x))
        h += F.relu(self.conv2(h))
        return self.fc(h.mean((2, 3)))


def test_functional_ops_of_an_exported_graph_get_their_rules():
    torch.manual_seed(0)
    model, x = Functional().eval(), torch.rand(3, 3, 8, 8)
    rebuilt = exported(model, x)
    expected = LRP(model, composite=EpsilonPlus())(x).attribution
    assert torch.equal(LRP(rebuilt, composite=EpsilonPlus())(x).attribution, expected)


def test_a_graph_exported_in_train_mode_is_refused_with_the_fix(digits_model, digits_batch):
    import copy

    training = copy.deepcopy(digits_model).train()
    program = torch.export.export(training, (digits_batch[0][:2],))
    with pytest.raises(ValueError, match=r"train mode.*model.eval\(\)"):
        from_exported(program)


def test_something_that_is_not_an_export_is_refused(digits_model):
    with pytest.raises(TypeError, match="ExportedProgram"):
        from_exported(digits_model)

