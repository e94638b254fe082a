"""The common frame of every explanation method: validate, borrow the model, attribute, package."""
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from xai.explanation import Explanation
from xai.model_guard import borrowed, model_device
from xai.targets import Target, resolve_target
from xai.validation import check_input, check_model_input, check_output, run_model

__all__ = ["Analyzer", "analyze", "check_input", "check_output", "predict"]


class Analyzer(ABC):
    """Base class: subclasses implement ``_attribute`` on an input already on the model's device."""

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model

    @property
    def method(self) -> str:
        """The readable name stored in ``Explanation.method``."""
        return type(self).__name__

    def __call__(self, x: Tensor, target: Target = None) -> Explanation:
        check_input(x)
        check_model_input(self.model, x)
        self._check_model()
        device = model_device(self.model)
        with borrowed(self.model):
            attribution, output, resolved = self._attribute(x.detach().to(device), target)
        return Explanation(
            attribution=attribution.detach().to(x.device),
            output=output.detach().to(x.device),
            target=resolved.to(x.device),
            method=self.method,
        )

    def _check_model(self) -> None:
        """Raise ``UnsupportedModelError`` before any computation if the model cannot be explained."""

    @abstractmethod
    def _attribute(self, x: Tensor, target: Target) -> tuple[Tensor, Tensor, Tensor]:
        """Return (attribution, output, resolved target) for ``x`` on the model's device."""


def predict(model: nn.Module, x: Tensor, target: Target) -> tuple[Tensor, Tensor]:
    """The model's output on ``x`` without a graph, and the target it resolves to."""
    with torch.no_grad():
        output = run_model(model, x)
    return output, resolve_target(target, output)


def analyze(x: Tensor, analyzer: Analyzer, target: Target = None) -> Explanation:
    """Functional form: ``analyze(x, analyzer, target)`` is ``analyzer(x, target)``."""
    return analyzer(x, target)
