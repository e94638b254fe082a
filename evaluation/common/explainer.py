"""The explainer that randomisation and robustness metrics call again on changed inputs, targets or models, and the
checks these metrics share.

An explainer is either an ``xai.Analyzer`` (it explains its own ``.model``, which must be the model given to the
metric) or any callable ``explain(model, x, target) -> attribution`` (a Tensor shaped like the attribution under
test). For a randomised copy of the model, ``explainer_on_copy`` deep-copies an analyzer together with its model,
so that every module the analyzer holds (e.g. GradCAM's layer) is the copy's; a callable just gets the copy.
"""
import copy
from typing import Callable, Union

import torch
from torch import Tensor, nn

from evaluation.common.inputs import check_metric_inputs
from xai.analyzer import Analyzer
from xai.model_guard import model_device

ExplainFunction = Callable[[nn.Module, Tensor, Tensor], Tensor]
Explainer = Union[Analyzer, ExplainFunction]


def check_explainer(explainer: Explainer) -> Explainer:
    """An analyzer or a callable ``(model, x, target) -> attribution``."""
    if not isinstance(explainer, Analyzer) and (not callable(explainer) or isinstance(explainer, type)):
        raise TypeError(
            "explainer must be an xai.Analyzer (e.g. xai.Gradient(model)) or a function (model, x, target) -> "
            f"attribution, got {explainer!r}"
        )
    return explainer


def check_explains(explainer: Explainer, model: nn.Module) -> None:
    """An analyzer must explain the very model the metric is given (not another copy of it)."""
    if isinstance(explainer, Analyzer) and explainer.model is not model:
        raise ValueError(
            "the analyzer explains another model than the one given to the metric: pass the analyzer's own model "
            "(analyzer.model), or build the analyzer on this model"
        )


def explainer_on_copy(explainer: Explainer, model: nn.Module) -> tuple[Explainer, nn.Module]:
    """(explainer, model) on a deep copy of ``model``; the user's model and analyzer stay untouched."""
    if isinstance(explainer, Analyzer):
        twin = copy.deepcopy(explainer)
        return twin, twin.model
    return explainer, copy.deepcopy(model)


def explain(explainer: Explainer, model: nn.Module, x: Tensor, target: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The explainer's attribution of ``x`` for ``target`` (one class per sample), checked to have ``shape``[1:]."""
    if isinstance(explainer, Analyzer):
        attribution = explainer(x, target).attribution
    else:
        attribution = explainer(model, x, target)
    expected = (x.shape[0], *shape[1:])
    if not isinstance(attribution, Tensor) or tuple(attribution.shape) != expected:
        got = tuple(attribution.shape) if isinstance(attribution, Tensor) else type(attribution).__name__
        raise ValueError(
            f"the explainer returned {got} for {x.shape[0]} inputs, but the attribution under test has shape "
            f"{tuple(shape)}: the explainer must give attributions shaped like the one being evaluated"
        )
    return attribution.detach().to(device=x.device, dtype=x.dtype)


def chunks(total: int, batch_size: int) -> list[slice]:
    """Consecutive slices of at most ``batch_size`` rows covering ``range(total)``."""
    return [slice(start, min(start + batch_size, total)) for start in range(0, total, batch_size)]


def check_seed(seed: int | None) -> int:
    """An int seed as given, or a fresh one drawn from torch's global generator for ``None``."""
    if seed is None:
        return int(torch.randint(0, 2**62, ()).item())
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None (fresh draws), got {seed!r}")
    return seed


def checked_inputs(
    model: nn.Module, x: Tensor, attribution: Tensor, explainer: Explainer
) -> tuple[Tensor, Tensor]:
    """``x`` and ``attribution`` on the model's device (attribution in x's dtype), after every argument check."""
    check_metric_inputs(model, x, attribution)
    check_explains(explainer, model)
    device = model_device(model)
    return x.detach().to(device), attribution.detach().to(device=device, dtype=x.dtype)


def explain_in_chunks(
    explainer: Explainer, model: nn.Module, x: Tensor, target: Tensor, shape: tuple[int, ...], batch_size: int
) -> Tensor:
    """The explainer's attributions of all of ``x``, at most ``batch_size`` samples per call."""
    return torch.cat([explain(explainer, model, x[s], target[s], shape) for s in chunks(len(x), batch_size)])
