"""Gradient and Input x Gradient: the plain backward pass of the target's logit."""
import torch
from torch import Tensor, nn

from xai.analyzer import Analyzer
from xai.targets import Target, one_hot_at, resolve_target
from xai.validation import run_model


def target_gradient(model: nn.Module, x: Tensor, target: Target) -> tuple[Tensor, Tensor, Tensor]:
    """d output[target] / d x in one forward and one backward; returns (gradient, output, resolved target)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        output = run_model(model, x)
        resolved = resolve_target(target, output)
        (grad,) = torch.autograd.grad(output, x, grad_outputs=one_hot_at(output, resolved))
    return grad, output, resolved


class Gradient(Analyzer):
    """Sensitivity of the target logit to each input value."""

    def _attribute(self, x, target):
        return target_gradient(self.model, x, target)


class InputTimesGradient(Analyzer):
    """x * gradient: for ReLU nets without biases this equals LRP-0."""

    def _attribute(self, x, target):
        grad, output, resolved = target_gradient(self.model, x, target)
        return x * grad, output, resolved
