"""The BatchNorm-folded stand-in SmoothGrad and IG run: same function, user's model untouched, safe fallbacks."""
import copy

import pytest
import torch
from torch import nn

from xai.batchnorm_folding import fold_batchnorm


def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("name", ["digits", "resnet18"])
def test_folded_model_has_the_same_outputs_and_input_gradients(name, digits_model_f64, resnet18_model_f64):
    model = digits_model_f64 if name == "digits" else resnet18_model_f64
    shape = (3, 1, 32, 32) if name == "digits" else (2, 3, 64, 64)
    folded = fold_batchnorm(model)
    assert count(model, nn.BatchNorm2d) > 0 and count(folded, nn.BatchNorm2d) == 0
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    out, out_folded = model(x), folded(x)
    torch.testing.assert_close(out_folded, out, rtol=1e-10, atol=1e-10)
    (grad,) = torch.autograd.grad(out[:, 1].sum(), x)
    (grad_folded,) = torch.autograd.grad(out_folded[:, 1].sum(), x)
    torch.testing.assert_close(grad_folded, grad, rtol=1e-10, atol=1e-10 * grad.abs().max().item())


def test_the_users_model_is_not_modified(resnet18_model):
    model = copy.deepcopy(resnet18_model)
    modules = [(name, id(m)) for name, m in model.named_modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fold_batchnorm(model)
    assert [(name, id(m)) for name, m in model.named_modules()] == modules
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert count(model, nn.BatchNorm2d) == 20


def test_models_it_must_not_fold_are_returned_as_they_are(digits_model):
    training = copy.deepcopy(digits_model).train()
    assert fold_batchnorm(training) is training  # BatchNorm is not affine in training mode

    hooked = copy.deepcopy(digits_model)
    hooked[0][1].register_forward_hook(lambda module, args, output: output * 2)
    assert fold_batchnorm(hooked) is hooked  # a folded layer would skip the hook

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                x = -x
            return self.norm(self.conv(x)).flatten(1)

    untraceable = Untraceable().eval()
    assert fold_batchnorm(untraceable) is untraceable

    no_batchnorm = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    assert fold_batchnorm(no_batchnorm) is no_batchnorm


def test_shared_or_branching_layers_are_left_alone():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.norm(self.conv(x))  # conv used twice: folding would change its second use
            z = self.conv(y)
            return (z + self.conv(x)).flatten(1)

    model = Shared().eval()
    with torch.no_grad():
        model.norm.running_var.fill_(4.0)
    folded = fold_batchnorm(model)
    x = torch.randn(2, 2, 5, 5)
    torch.testing.assert_close(folded(x), model(x))
