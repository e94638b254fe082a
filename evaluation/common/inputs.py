"""The checks of what every metric is given: a model, a batch of images it can take, and an attribution of them."""
import torch
from torch import Tensor, nn

from xai.validation import check_input, check_model_input


def check_attribution(x: Tensor, attribution: Tensor) -> None:
    """The attribution must rank the features of ``x``: same shape (or one channel for all), finite values."""
    if not isinstance(attribution, Tensor):
        raise TypeError(f"attribution must be a torch.Tensor shaped like the input, got {type(attribution).__name__}")
    n, c, h, w = x.shape
    if attribution.shape not in (x.shape, (n, 1, h, w)):
        raise ValueError(
            f"attribution has shape {tuple(attribution.shape)} but the input has shape {tuple(x.shape)}: "
            f"give one attribution value per input value (shape {tuple(x.shape)}) or one per pixel ({(n, 1, h, w)})"
        )
    if not attribution.dtype.is_floating_point:
        raise TypeError(f"attribution must be a floating-point tensor, got dtype {attribution.dtype}")
    if not torch.isfinite(attribution).all():
        raise ValueError(
            "attribution contains NaN or Inf values, so it does not rank the features: "
            "fix the explanation (e.g. a larger LRP epsilon) or replace them with torch.nan_to_num"
        )


def check_metric_inputs(model: nn.Module, x: Tensor, attribution: Tensor) -> None:
    """A model, a batch of images (N, C, H, W) it can take, and an attribution of them (``check_attribution``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_input(x)
    check_model_input(model, x)
    if x.dim() != 4:
        raise ValueError(f"input must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    check_attribution(x, attribution)
