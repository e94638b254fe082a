"""PatternNet / PatternAttribution (Kindermans et al., ICLR 2018) and the patterns they are fitted with.

- The paper's toy problem: the fitted pattern recovers the signal direction, the gradient the filter.
- ``fit_patterns`` equals a direct, non-streaming computation of the paper's formula on unfolded patches (float64,
  1e-8 relative: the streaming sums are the same sums in another order), and batching does not change it (1e-10).
- Save/load round trip is exact; a file for another model is refused naming the layer.
- PatternAttribution on one linear layer equals (w * a_+-) y by hand; with all-ones patterns (w * a = w) both
  analyzers' backward is the plain gradient times y, on the bundled CNN and on a ResNet18 with randomised BatchNorm
  (folded, residual sums, in-place ReLUs), to 1e-8 relative in float64 (folding rounds the weights differently).
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.bundled import digits_split
from tests.conftest import randomise_batchnorm
from tests.test_lrp_models import assert_unchanged, snapshot
from xai import Gradient, PatternAttribution, PatternNet, Patterns, UnsupportedModelError, fit_patterns
from xai.lrp.canonize import merge_batch_norm
from xai.pattern import LayerPattern


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.detach().flatten(), b.detach().flatten(), dim=0))


def assert_relative_close(ours, reference, rtol):
    error = (ours - reference).abs().max().item()
    scale = reference.abs().max().item()
    assert error <= rtol * scale, f"max abs error {error:.3e} > {rtol} * {scale:.3e}"


def batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [x[i : i + size] for i in range(0, len(x), size)]


# --- (a) the toy example --------------------------------------------------------------------------------------------

def test_pattern_recovers_the_signal_direction_where_the_gradient_recovers_the_filter():
    # x = a_s y + a_d eps (section 2 of the paper); w extracts y: w^T a_s = 1, w^T a_d = 0
    generator = torch.Generator().manual_seed(0)
    signal_direction = torch.tensor([1.0, 0.0], dtype=torch.float64)
    distractor_direction = torch.tensor([1.0, 1.0], dtype=torch.float64)
    y, eps = torch.randn(2, 4000, 1, generator=generator, dtype=torch.float64)
    x = y * signal_direction + eps * distractor_direction
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0]]))
    torch.testing.assert_close(model(x), y)  # the filter extracts the signal exactly

    patterns = fit_patterns(model, batches(x, 1000), progress=False)
    assert cosine(patterns[""].positive, signal_direction) > 0.99
    assert cosine(patterns[""].negative, signal_direction) > 0.99
    sample = x[y[:, 0] > 0.5][:5]
    signal = PatternNet(model, patterns)(sample, target=0).attribution
    gradient = Gradient(model)(sample, target=0).attribution
    assert all(cosine(s, signal_direction) > 0.99 for s in signal)
    assert all(cosine(g, model.weight[0]) > 0.999999 for g in gradient)  # the filter ...
    assert all(cosine(g, signal_direction) < 0.71 for g in gradient)  # ... is 45 degrees off the signal


# --- (b) the estimator against a direct computation ---------------------------------------------------------------

class TinyNet(nn.Sequential):
    """Conv + BatchNorm (folded), a strided grouped conv, two Linear layers: every kind of pattern layer."""

    def __init__(self):
        super().__init__(
            nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
            nn.Conv2d(4, 4, 3, stride=2, groups=2), nn.ReLU(), nn.Flatten(),
            nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 3),
        )


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = TinyNet().double()
    with torch.no_grad():
        randomise_batchnorm(model, torch.Generator().manual_seed(1))
    model.eval()
    x = torch.randn(40, 2, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return model, x


def direct_patterns(model: TinyNet, x: torch.Tensor) -> dict[str, LayerPattern]:
    """The paper's formula per unit and region, from all layer inputs at once (patches unfolded), unit by unit."""
    layers = {"0": (model[0], model[1]), "3": (model[3], model[3]), "6": (model[6], model[6]), "8": (model[8], model[8])}
    seen = {}
    handles = [first.register_forward_pre_hook(lambda m, a, p=path: seen.__setitem__((p, "x"), a[0]))
               for path, (first, _) in layers.items()]
    handles += [last.register_forward_hook(lambda m, a, o, p=path: seen.__setitem__((p, "y"), o))
                for path, (_, last) in layers.items()]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    result = {}
    for path, (layer, last) in layers.items():
        weight = layer.weight.detach() if last is layer else merge_batch_norm(layer.weight, layer.bias, last)[0]
        inputs, outputs = seen[(path, "x")], seen[(path, "y")]
        if isinstance(layer, nn.Conv2d):
            patches = F.unfold(inputs, layer.kernel_size, padding=layer.padding, stride=layer.stride)  # (N, C k k, L)
            outputs = outputs.flatten(2)  # (N, units, L)
            per_group = patches.shape[1] // layer.groups
            units_per_group = layer.out_channels // layer.groups
        regions = []
        for region in ("positive", "negative"):
            pattern = torch.zeros_like(weight)
            for j in range(weight.shape[0]):
                if isinstance(layer, nn.Conv2d):
                    group = j // units_per_group
                    xs = patches[:, group * per_group : (group + 1) * per_group].transpose(1, 2).reshape(-1, per_group)
                    ys = outputs[:, j].reshape(-1)
                else:
                    xs, ys = inputs, outputs[:, j]
                chosen = ys > 0 if region == "positive" else ys < 0
                if chosen.sum() < 2:
                    continue  # y has no variance in this region: a zero pattern (fit_patterns' convention)
                xs, ys = xs[chosen], ys[chosen]
                covariance = (xs * ys[:, None]).mean(0) - xs.mean(0) * ys.mean()
                w = weight[j].reshape(-1)
                pattern[j] = (covariance / (w @ covariance)).reshape(weight[j].shape)
            regions.append(pattern)
        result[path] = LayerPattern(*regions)
    return result


def test_streamed_patterns_equal_the_formula_computed_directly(tiny):
    model, x = tiny
    streamed = fit_patterns(model, batches(x, 7), progress=False)  # 7 does not divide 40: a short last batch
    direct = direct_patterns(model, x)
    assert set(streamed) == set(direct)
    for path in direct:
        for region in (0, 1):
            assert_relative_close(streamed[path][region], direct[path][region], rtol=1e-8)
    at_once = fit_patterns(model, [x], progress=False)
    for path in direct:
        for region in (0, 1):
            assert_relative_close(streamed[path][region], at_once[path][region], rtol=1e-10)


def test_fit_accepts_input_label_pairs_and_leaves_the_model_unchanged(tiny):
    model, x = tiny
    model = copy.deepcopy(model).train()
    before = snapshot(model)
    from_pairs = fit_patterns(model, [(x[:20], torch.zeros(20)), (x[20:], torch.zeros(20))], progress=False)
    assert_unchanged(model, before)
    plain = fit_patterns(model, [x[:20], x[20:]], progress=False)
    assert all(torch.equal(from_pairs[p].positive, plain[p].positive) for p in plain)


def test_fit_refuses_bad_data(tiny):
    model, x = tiny
    with pytest.raises(ValueError, match="no batch"):
        fit_patterns(model, [], progress=False)
    with pytest.raises(TypeError, match="input tensors"):
        fit_patterns(model, [x.numpy()], progress=False)
    with pytest.raises(TypeError, match="dtype"):
        fit_patterns(model, [x.float()], progress=False)


def test_a_batchnorm_that_cannot_be_folded_is_refused_by_name():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with pytest.raises(UnsupportedModelError, match=r"1 \(BatchNorm1d\)"):
        fit_patterns(model, [torch.randn(8, 4)], progress=False)


# --- (c) files ------------------------------------------------------------------------------------------------------

def test_save_load_round_trip_and_a_file_for_another_model_is_refused(tiny, tmp_path):
    model, x = tiny
    patterns = fit_patterns(model, [x], progress=False)
    path = tmp_path / "patterns.pt"
    patterns.save(path)
    loaded = Patterns.load(path, model)
    assert list(loaded) == list(patterns)
    for name in patterns:
        assert torch.equal(loaded[name].positive, patterns[name].positive)
        assert torch.equal(loaded[name].negative, patterns[name].negative)
    torch.testing.assert_close(PatternNet(model, loaded)(x[:3]).attribution,
                               PatternNet(model, patterns)(x[:3]).attribution, rtol=0, atol=0)

    wider = TinyNet().double()
    wider[6] = nn.Linear(16, 6)
    wider[8] = nn.Linear(6, 3)
    with pytest.raises(ValueError, match="layer '6' .* shape"):
        Patterns.load(path, wider.double())
    with pytest.raises(ValueError, match="layer '6' .* shape"):
        PatternAttribution(wider.double(), loaded)
    deeper = nn.Sequential(*TinyNet(), nn.ReLU(), nn.Linear(3, 3)).double()
    with pytest.raises(ValueError, match="none for layer '10'"):
        PatternNet(deeper, loaded)
    shallower = nn.Sequential(*list(TinyNet())[:7]).double()
    with pytest.raises(ValueError, match="layer '8' that the model does not have"):
        Patterns.load(path, shallower)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a patterns file"):
        Patterns.load(tmp_path / "other.pt")


# --- (d) the analyzers ----------------------------------------------------------------------------------------------

def test_pattern_attribution_of_a_linear_layer_is_w_times_a_times_y():
    generator = torch.Generator().manual_seed(3)
    mixing = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    x = torch.randn(500, 4, generator=generator, dtype=torch.float64) @ mixing + 0.3  # correlated, off-centre
    model = nn.Linear(4, 3).double()
    patterns = fit_patterns(model, batches(x, 128), progress=False)
    sample = x[:20]
    y = model(sample).detach()
    assert (y > 0).any() and (y < 0).any()  # both components are used
    for target in range(3):
        a = torch.where(y[:, target, None] > 0, patterns[""].positive[target], patterns[""].negative[target])
        expected_attribution = model.weight[target].detach() * a * y[:, target, None]
        attribution = PatternAttribution(model, patterns)(sample, target=target).attribution
        signal = PatternNet(model, patterns)(sample, target=target).attribution
        assert_relative_close(attribution, expected_attribution, rtol=1e-12)
        assert_relative_close(signal, a * y[:, target, None], rtol=1e-12)


def ones_like_weights(model: nn.Module) -> Patterns:
    """Patterns of ones: PatternAttribution's weights w * a are then the weights, its backward the gradient's."""
    return Patterns({path: LayerPattern(torch.ones_like(m.weight), torch.ones_like(m.weight))
                     for path, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))})


@pytest.mark.parametrize("name", ["digits", "resnet18"])
def test_with_patterns_equal_to_the_weights_the_backward_is_the_gradient(name, digits_model_f64, digits_batch,
                                                                          resnet18_model_f64, resnet_input):
    model, x = ((digits_model_f64, digits_batch[0].double()) if name == "digits"
                else (resnet18_model_f64, resnet_input[:1].double()))
    before = snapshot(model)
    explanation = PatternAttribution(model, ones_like_weights(model))(x)
    assert_unchanged(model, before)
    gradient = Gradient(model)(x, target=explanation.target)
    y = explanation.output.gather(1, explanation.target[:, None])
    assert_relative_close(explanation.attribution, gradient.attribution * y.reshape(-1, *[1] * (x.dim() - 1)),
                          rtol=1e-8)


@pytest.fixture(scope="module")
def digits_patterns(digits_model):
    images, _ = digits_split("train")
    return fit_patterns(digits_model, batches(images[:300], 100), progress=False)


def test_digits_cnn_runs_and_is_left_unchanged(digits_model, digits_batch, digits_patterns):
    x, _ = digits_batch
    assert len(digits_patterns) == 6
    before = snapshot(digits_model)
    signal = PatternNet(digits_model, digits_patterns)(x)
    attribution = PatternAttribution(digits_model, digits_patterns)(x, target=signal.target)
    assert_unchanged(digits_model, before)
    with torch.no_grad():
        torch.testing.assert_close(signal.output, digits_model(x))
    for explanation in (signal, attribution):
        assert explanation.attribution.shape == x.shape
        assert torch.isfinite(explanation.attribution).all()
        assert (explanation.attribution.flatten(1).abs().sum(1) > 0).all()
    # PatternAttribution is not the gradient: the patterns differ from the weights
    gradient = Gradient(digits_model)(x, target=signal.target).attribution
    assert max(cosine(a, g) for a, g in zip(attribution.attribution, gradient)) < 0.99


def test_an_analyzer_reused_after_the_weights_change_uses_the_new_weights(digits_model, digits_batch,
                                                                        digits_patterns):
    """The folded model and the backward weights are cached per analyzer, keyed by the model's tensors."""
    import copy

    model, x = copy.deepcopy(digits_model), digits_batch[0][:4]
    analyzer = PatternAttribution(model, digits_patterns)
    first = analyzer(x, target=0).attribution
    assert torch.equal(analyzer(x, target=0).attribution, first)  # the cached preparation
    with torch.no_grad():
        model[0][0].weight.mul_(2.0)  # the first conv, folded with its BatchNorm
        model[0][1].running_var.mul_(4.0)
    changed = analyzer(x, target=0).attribution
    assert not torch.equal(changed, first)
    assert torch.equal(changed, PatternAttribution(model, digits_patterns)(x, target=0).attribution)


def test_bad_patterns_argument(digits_model):
    with pytest.raises(TypeError, match="xai.Patterns"):
        PatternNet(digits_model, {"0.0": torch.zeros(16, 1, 3, 3)})
    with pytest.raises(TypeError, match="LayerPattern"):
        Patterns({"0.0": torch.zeros(16, 1, 3, 3)})
