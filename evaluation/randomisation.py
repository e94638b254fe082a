"""Randomisation sanity checks: an explanation should change when what it explains is randomised.

- ``ModelParameterRandomisation`` (Adebayo et al. 2018, "Sanity checks for saliency maps"), as Quantus 0.6.0's
  ``MPRT`` / ``ModelParameterRandomisation``: the layers with parameters (modules with ``reset_parameters``) are
  re-initialised one at a time, from the output (``layer_order="top_down"``) or the input (``"bottom_up"``),
  cumulatively (cascading) or each on its own (``independent=True``, the others restored). For each layer l,
  s_l(x) = sim(n(A), n(E_l(x))) with A the attribution under test, E_l the explainer on the randomised model and
  n(a) = |a| / max |a| per sample (Quantus: normalise then abs). Score = mean_l s_l; ``layer_scores`` keeps each
  s_l (in randomisation order). The re-initialisation draws are Quantus's: ``torch.manual_seed(seed + 1)`` before
  each layer's ``reset_parameters()``, so the same seed gives the same randomised models.
- ``RandomLogit`` (Sixt et al. 2020, "When explanations lie"), as Quantus's ``RandomLogit``: explain a class
  other than the target, drawn uniformly among the other ``num_classes - 1`` classes, score = sim(m(A), m(E_off))
  with m(a) = a / max |a| per sample (no absolute value, Quantus's defaults). The off-classes are Quantus's draws,
  ``np.random.RandomState(seed).randint(0, num_classes - 1, N)`` (Quantus draws them per batch, ours once for all
  N: equal when N <= Quantus's batch_size).

sim is Spearman's rank correlation or SSIM on the flattened attributions (``evaluation.common.similarity``). Lower is
better for both (an explanation that ignores the model or the class scores 1), as Quantus declares.

The explainer (``evaluation.common.explainer``) is an ``xai.Analyzer`` or a callable ``(model, x, target) ->
attribution``. ``ModelParameterRandomisation`` randomises a deep copy: an analyzer is deep-copied together with
its model (so modules it holds, such as GradCAM's layer, are the copy's), a callable is given the copy. The
user's model and analyzer are never changed.
"""
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from evaluation.common.result import MetricResult
from evaluation.common.explainer import (
    Explainer, check_explainer, check_seed, checked_inputs, explain_in_chunks, explainer_on_copy,
)
from evaluation.common.similarity import normalise_by_max, similarity_function
from xai.analyzer import predict
from xai.validation import check_batch_size
from xai.model_guard import borrowed
from xai.targets import Target

LAYER_ORDERS = ("top_down", "bottom_up")


@dataclass(frozen=True)
class RandomisationResult(MetricResult):
    """``scores`` (N,): the mean over layers; ``layer_scores``: layer path -> (N,), in randomisation order."""

    layer_scores: dict[str, Tensor]


def randomise(layer: nn.Module, seed: int) -> None:
    """Re-initialise ``layer`` with Quantus's draws, leaving the global random state as it was."""
    devices = [parameter.device for parameter in layer.parameters() if parameter.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed + 1)
        layer.reset_parameters()


class ModelParameterRandomisation:
    """Similarity of the attribution to the explanations of layer-wise randomised copies (see the module)."""

    higher_is_better = False

    def __init__(
        self,
        explainer: Explainer,
        layer_order: str = "top_down",
        similarity: str = "spearman",
        independent: bool = False,
        seed: int | None = 42,
        batch_size: int = 64,
        progress: bool = True,
    ):
        self.explainer = check_explainer(explainer)
        if layer_order not in LAYER_ORDERS:
            raise ValueError(f"layer_order must be one of {', '.join(map(repr, LAYER_ORDERS))}, got {layer_order!r}")
        self.layer_order = layer_order
        self.similarity = similarity_function(similarity)
        self.independent = bool(independent)
        self.seed = None if seed is None else check_seed(seed)
        self.batch_size = check_batch_size(batch_size)
        self.progress = progress

    def __call__(self, model: nn.Module, x: Tensor, attribution: Tensor, target: Target = None) -> RandomisationResult:
        """``target`` as for analyzers (None = the top class on x); explanations are of the resolved target."""
        x, attribution = checked_inputs(model, x, attribution, self.explainer)
        seed = check_seed(self.seed)
        with borrowed(model):  # the copy is made in eval mode with frozen parameters
            _, target = predict(model, x, target)
            explainer, twin = explainer_on_copy(self.explainer, model)
        layers = [(name, module) for name, module in twin.named_modules() if hasattr(module, "reset_parameters")]
        if not layers:
            raise ValueError("the model has no layer to randomise (no module with reset_parameters)")
        if self.layer_order == "top_down":
            layers.reverse()
        original = normalise_by_max(attribution, absolute=True)
        layer_scores = {}
        for name, layer in tqdm(layers, desc="ModelParameterRandomisation", disable=not self.progress):
            saved = {key: value.clone() for key, value in layer.state_dict().items()} if self.independent else None
            randomise(layer, seed)
            explained = explain_in_chunks(explainer, twin, x, target, attribution.shape, self.batch_size)
            layer_scores[name] = self.similarity(original, normalise_by_max(explained, absolute=True))
            if saved is not None:
                layer.load_state_dict(saved)
        return RandomisationResult(torch.stack(list(layer_scores.values())).mean(0), layer_scores)


class RandomLogit:
    """Similarity of the attribution to the explanation of a random other class (see the module docstring)."""

    higher_is_better = False

    def __init__(
        self,
        explainer: Explainer,
        num_classes: int | None = None,
        similarity: str = "ssim",
        seed: int | None = 42,
        batch_size: int = 64,
    ):
        self.explainer = check_explainer(explainer)
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 2):
            raise ValueError(f"num_classes must be an int >= 2 or None (the model's outputs), got {num_classes!r}")
        self.num_classes = num_classes
        self.similarity = similarity_function(similarity)
        self.seed = None if seed is None else check_seed(seed)
        self.batch_size = check_batch_size(batch_size)

    def off_classes(self, target: Tensor, num_classes: int) -> Tensor:
        """One class per sample, uniform among the ``num_classes - 1`` classes other than its target."""
        draws = np.random.RandomState(check_seed(self.seed) % 2**32).randint(0, num_classes - 1, len(target))
        draws = torch.as_tensor(draws, dtype=torch.long, device=target.device)
        return draws + (draws >= target).long()

    def __call__(self, model: nn.Module, x: Tensor, attribution: Tensor, target: Target = None) -> MetricResult:
        """``target`` as for analyzers (None = the top class on x)."""
        x, attribution = checked_inputs(model, x, attribution, self.explainer)
        with borrowed(model):
            output, target = predict(model, x, target)
            num_classes = output.shape[1] if self.num_classes is None else self.num_classes
            if num_classes > output.shape[1] or int(target.max()) >= num_classes:
                raise ValueError(
                    f"num_classes={num_classes} does not fit a model with {output.shape[1]} outputs and targets up "
                    f"to {int(target.max())}: give the model's number of classes (or None)"
                )
            off = self.off_classes(target, num_classes)
            explained = explain_in_chunks(self.explainer, model, x, off, attribution.shape, self.batch_size)
        return MetricResult(self.similarity(normalise_by_max(attribution), normalise_by_max(explained)))
