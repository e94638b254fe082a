"""Checks on what users hand to analyzers and metrics, run before any computation.

Each error names the argument, what was given and the fix, so that a mistake never surfaces as a raw torch error
from deep inside a backward pass (or, worse, as attributions of the wrong thing).
"""
import difflib
import math
import numbers
from typing import Any

import torch
from torch import Tensor, nn

#: Layers whose weight tells the input a model expects: (input dimensions without the batch, channel attribute).
_FIRST_LAYERS = {nn.Conv1d: (2, "in_channels"), nn.Conv2d: (3, "in_channels"), nn.Conv3d: (4, "in_channels"),
                 nn.Linear: (1, "in_features")}


def finite_number(value: Any, name: str, minimum: float | None = None) -> float:
    """``value`` as a float, refused unless it is a finite real number (and >= ``minimum`` when given)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
    return float(value)


def positive_int(value: Any, name: str, meaning: str = "", minimum: int = 1) -> int:
    """``value`` if it is an int >= ``minimum`` (bools refused); the error names ``name`` and what it counts."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {kind}{f' ({meaning})' if meaning else ''}, got {value!r}")
    return value


def check_batch_size(batch_size: int) -> int:
    """The bound on inputs per forward/backward must be a positive int."""
    return positive_int(batch_size, "batch_size", "inputs per forward/backward")


def check_seed(seed: Any) -> int | None:
    """An int seed or None (fresh draws), as given."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    return seed


def module_at(model: nn.Module, path: str, argument: str) -> nn.Module:
    """The module at ``path`` (as in ``named_modules()``), or an error naming ``argument`` and the closest paths."""
    modules = dict(model.named_modules())
    if path in modules:
        return modules[path]
    close = difflib.get_close_matches(path, [p for p in modules if p], n=3, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else "see model.named_modules() for the paths"
    raise ValueError(f"{argument}: the model has no module at path {path!r}; {hint}")


def check_input(x: Tensor) -> None:
    """Reject inputs that would give meaningless attributions, before any computation."""
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a torch.Tensor of shape (N, ...), got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"input must be a floating-point tensor, got dtype {x.dtype}: convert it with x.float()")
    if x.dim() < 2:
        raise ValueError(f"input must have a batch dimension first (N, ...), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"input holds no samples (shape {tuple(x.shape)}): give at least one")
    if not torch.isfinite(x).all():
        raise ValueError("input contains NaN or Inf values: clean or re-normalise the input before explaining it")


def first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first Conv or Linear layer in definition order (the one the input meets in a feed-forward net)."""
    return next(((path, m) for path, m in model.named_modules() if type(m) in _FIRST_LAYERS), None)


def check_model_input(model: nn.Module, x: Tensor) -> None:
    """Compare ``x`` with what the model's first layer takes: batch dimension, channels, dtype."""
    found = first_layer(model)
    if found is None:
        return
    path, layer = found
    dims, attribute = _FIRST_LAYERS[type(layer)]
    expected = getattr(layer, attribute)
    what = f"the model's first layer {path} ({type(layer).__name__}, {attribute}={expected})"
    if dims > 1 and x.dim() == dims:
        raise ValueError(f"input has shape {tuple(x.shape)}, one sample without the batch dimension: {what} takes "
                         f"(N, {expected}, ...); add it with x.unsqueeze(0)")
    if dims > 1 and x.dim() == dims + 1 and x.shape[1] != expected:
        hint = " (for grey images into an RGB model, or back, convert with torchvision.transforms.Grayscale(" \
               f"num_output_channels={expected}))" if {x.shape[1], expected} <= {1, 3} else ""
        raise ValueError(f"input has {x.shape[1]} channels (shape {tuple(x.shape)}), but {what} takes "
                         f"{expected}{hint}")
    if layer.weight.dtype != x.dtype:
        raise TypeError(f"input has dtype {x.dtype}, but {what} has dtype {layer.weight.dtype}: convert one, e.g. "
                        f"x.to({layer.weight.dtype}) or model.to({x.dtype})")


def forward(model: nn.Module, x: Tensor) -> Any:
    """``model(x)``, with torch's shape errors led by the input's shape and the first layer."""
    try:
        return model(x)
    except RuntimeError as error:
        if not any(s in str(error) for s in ("shape", "size", "Expected")):
            raise
        found = first_layer(model)
        layer = f"; its first layer is {found[0]} ({found[1]!r})" if found else ""
        raise ValueError(f"the model cannot run on inputs of shape {tuple(x.shape)}{layer}: does it expect another "
                         f"image size? torch says: {error}") from error


def run_model(model: nn.Module, x: Tensor) -> Tensor:
    """``forward(model, x)``, checked to be one row of logits per sample."""
    output = forward(model, x)
    check_output(output)
    return output


def check_output(output: Any) -> None:
    """Analyzers explain classifiers: one row of class scores (logits, not probabilities) per sample."""
    if isinstance(output, (tuple, list, dict)):
        kind = f"a dict with keys {list(output)}" if isinstance(output, dict) else \
            f"a {type(output).__name__} of {len(output)}"
        raise TypeError(f"the model returns {kind}; analyzers need one tensor of logits (N, classes): wrap it, e.g. "
                        "class Logits(nn.Module): def forward(self, x): return model(x)[0]  (or ['logits'])")
    if not isinstance(output, Tensor):
        raise TypeError(f"the model returns a {type(output).__name__}; analyzers need a tensor of logits (N, classes)")
    if output.dim() != 2:
        raise ValueError(
            f"the model's output has shape {tuple(output.shape)}; analyzers need logits of shape (N, classes)"
        )
    if output.shape[1] > 1 and _probabilities(output):
        raise ValueError("the model's output rows are non-negative and sum to 1: it ends in a softmax, but "
                         "explanations are taken on logits; remove the softmax (xai.strip_softmax(model) for a "
                         "trailing nn.Softmax)")


def _probabilities(output: Tensor) -> bool:
    """Rows that are non-negative and sum to 1 (to rounding), not all one-hot: what a softmax gives, what logits
    practically never do (a one-hot row is left alone: hand-built test models make those, a softmax does not)."""
    out = output.detach()
    if not out.dtype.is_floating_point:
        return False
    tolerance = 16 * torch.finfo(out.dtype).eps * out.shape[1]
    return bool((out >= 0).all() and ((out.sum(1) - 1).abs() <= tolerance).all() and ((out > 0) & (out < 1)).any())
