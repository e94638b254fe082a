"""Patterns (Kindermans et al., ICLR 2018): per Linear/Conv layer, the directions its output's signal has in its input.

A ``Patterns`` maps each layer's path (as in ``model.named_modules()``) to a ``LayerPattern``: the pattern a_+ fitted
where the layer's output is positive and a_- where it is negative (the two-component estimator), each of the
weight's shape. Patterns belong to the model with BatchNorm folded into the convolution before it
(``xai.batchnorm_folding.fold_batchnorm``): folding keeps every layer's path and weight shape, so a model and its
patterns are matched by path and shape, and a file for another model is refused naming the first layer that does
not fit. Files are ``torch.save`` dicts of tensors and strings, read back with ``weights_only=True``.
"""
from collections.abc import Mapping
from os import PathLike
from typing import Iterator, NamedTuple

import torch
from torch import Tensor, nn

from xai.batchnorm_folding import FoldedConv, fold_batchnorm
from xai.errors import UnsupportedModelError
from xai.lrp.canonize import BATCH_NORM_TYPES, LINEAR_TYPES, AffineLayer

FILE_FORMAT = "xai.patterns/1"


class LayerPattern(NamedTuple):
    """The two-component pattern of one layer: a_+ (output > 0) and a_- (output < 0), each of the weight's shape."""

    positive: Tensor
    negative: Tensor


def pattern_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers that carry a pattern: every Linear and Conv of the model, by path."""
    return {path: m for path, m in model.named_modules() if isinstance(m, LINEAR_TYPES)}


def folded_pattern_layers(model: nn.Module) -> tuple[nn.Module, dict[str, tuple[nn.Module, AffineLayer]]]:
    """The model (eval mode) with BatchNorm folded in, and per pattern layer path the module that runs there (the
    layer or its ``FoldedConv``) with the layer's geometry; ``UnsupportedModelError`` for a BatchNorm that stays."""
    folded = fold_batchnorm(model)
    left = [f"{path} ({type(m).__name__}): a BatchNorm that does not directly follow a convolution cannot be "
            "folded into it" for path, m in folded.named_modules() if isinstance(m, BATCH_NORM_TYPES)]
    if left:
        raise UnsupportedModelError(left, "Patterns are fitted on the model with each BatchNorm folded into the "
                                          "convolution before it; fold the others into their layer by hand.")
    modules = dict(folded.named_modules())
    layers = {}
    for path, layer in pattern_layers(model).items():
        module = modules.get(path)
        if module is None:  # not called in the traced forward: fx dropped it
            continue
        try:
            geometry = AffineLayer(module.conv if isinstance(module, FoldedConv) else module)
        except ValueError as error:
            raise UnsupportedModelError([f"{path} ({type(layer).__name__}): {error}"]) from None
        layers[path] = (module, geometry)
    return folded, layers


class Patterns(Mapping):
    """Layer path -> ``LayerPattern``; made by ``xai.fit_patterns``, written by ``save`` and read by ``load``."""

    def __init__(self, layers: Mapping[str, LayerPattern]):
        for path, pattern in layers.items():
            if not isinstance(pattern, LayerPattern) or pattern.positive.shape != pattern.negative.shape:
                raise TypeError(f"Patterns[{path!r}] must be a LayerPattern(positive, negative) of two tensors of "
                                f"one shape, got {pattern!r}")
        self._layers = dict(layers)

    def __getitem__(self, path: str) -> LayerPattern:
        return self._layers[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __repr__(self) -> str:
        return f"Patterns({len(self)} layers: {', '.join(self)})"

    def check(self, model: nn.Module) -> None:
        """Raise ``ValueError`` naming the first layer of ``model`` the patterns do not fit (missing, extra, shape)."""
        layers = pattern_layers(model)
        for path, layer in layers.items():
            if path not in self._layers:
                raise ValueError(f"the patterns have none for layer {path!r} ({type(layer).__name__}, weight "
                                 f"{tuple(layer.weight.shape)}): they were fitted on another model; fit them on this "
                                 "one with xai.fit_patterns(model, batches)")
            shape = tuple(self._layers[path].positive.shape)
            if shape != tuple(layer.weight.shape):
                raise ValueError(f"layer {path!r} ({type(layer).__name__}) has a weight of shape "
                                 f"{tuple(layer.weight.shape)} but its pattern has shape {shape}: the patterns were "
                                 "fitted on another model; fit them on this one with xai.fit_patterns(model, batches)")
        extra = [path for path in self._layers if path not in layers]
        if extra:
            raise ValueError(f"the patterns are for a layer {extra[0]!r} that the model does not have (no Linear/Conv "
                             "at that path): they were fitted on another model")

    def save(self, path: str | PathLike) -> None:
        """Write the patterns (on the CPU) with their layer paths and shapes."""
        layers = {name: {"positive": p.positive.detach().cpu(), "negative": p.negative.detach().cpu(),
                         "shape": list(p.positive.shape)} for name, p in self._layers.items()}
        torch.save({"format": FILE_FORMAT, "layers": layers}, path)

    @classmethod
    def load(cls, path: str | PathLike, model: nn.Module | None = None) -> "Patterns":
        """Read a file written by ``save`` (``weights_only=True``); with ``model``, refuse it unless it fits."""
        content = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(content, dict) or content.get("format") != FILE_FORMAT:
            raise ValueError(f"{path} is not a patterns file written by Patterns.save (format {FILE_FORMAT!r})")
        layers = {}
        for name, entry in content["layers"].items():
            layers[name] = LayerPattern(entry["positive"], entry["negative"])
            if list(entry["positive"].shape) != list(entry["shape"]):
                raise ValueError(f"{path}: the pattern of layer {name!r} has shape {tuple(entry['positive'].shape)}, "
                                 f"not the recorded {tuple(entry['shape'])}: the file is damaged")
        patterns = cls(layers)
        if model is not None:
            patterns.check(model)
        return patterns
