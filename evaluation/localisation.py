"""Localisation: does the relevance fall on the object? For data with ground-truth masks (True = object pixels).

A pixel's relevance r is the attribution summed over channels (as for ``unit="pixel"`` pixel flipping); with a
one-channel attribution this is exactly what Quantus 0.6.0 scores. With m the mask, n_m its pixel count:

- ``PointingGame`` (Zhang et al. 2018): 1 if a pixel of maximal r lies in the mask, else 0.
- ``RelevanceMassAccuracy`` (Arras et al. 2022): sum(r * m) / sum(r).
- ``RelevanceRankAccuracy`` (Arras et al. 2022): the fraction of the n_m most relevant pixels that lie in the mask.
- ``AttributionLocalisation`` (Kohlbrenner et al. 2020): sum(|r| * m) / (sum(|r|) + 1e-9).

All are higher-is-better and invariant to scaling r by a positive number, so Quantus's default division by the
batch's largest |r| changes none of them (beyond AttributionLocalisation's 1e-9). An empty mask scores NaN (Quantus
0.6.0's ``PointingGame`` scores it 1, see ``KNOWN_BROKEN``). All samples at once on the attribution's device.
"""
import torch
from torch import Tensor, nn

from evaluation.common.ordering import sorted_rows
from evaluation.common.result import MetricResult
from xai.targets import Target


def pixel_relevance_and_mask(attribution: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(N, H*W) relevance summed over channels and the (N, H*W) bool mask, checked against each other."""
    if not isinstance(attribution, Tensor) or attribution.dim() not in (3, 4) or not attribution.is_floating_point():
        raise TypeError("attribution must be a floating-point tensor (N, C, H, W) or (N, H, W)")
    if not torch.isfinite(attribution).all():
        raise ValueError("attribution contains NaN or Inf values: fix the explanation or use torch.nan_to_num")
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a bool tensor (N, 1, H, W) or (N, H, W), True = object; got "
                        f"{type(mask).__name__}")
    relevance = attribution.detach().sum(1) if attribution.dim() == 4 else attribution.detach()
    if mask.dim() == 4:
        if mask.shape[1] != 1:
            raise ValueError(f"mask must have one channel (N, 1, H, W), got shape {tuple(mask.shape)}")
        mask = mask[:, 0]
    if mask.shape != relevance.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit the attribution's (N, H, W) = "
                         f"{tuple(relevance.shape)}: give one mask per sample at the input's resolution")
    return relevance.flatten(1), mask.to(relevance.device).bool().flatten(1)


def _nan_where_empty(scores: Tensor, mask: Tensor) -> MetricResult:
    return MetricResult(torch.where(mask.any(1), scores, torch.full_like(scores, float("nan"))))


class PointingGame:
    """1 where a pixel of maximal relevance lies on the object, else 0 (see the module docstring)."""

    higher_is_better = True

    def __call__(self, model: nn.Module | None, x: Tensor, attribution: Tensor, target: Target = None, *,
                 mask: Tensor) -> MetricResult:
        r, m = pixel_relevance_and_mask(attribution, mask)
        at_max = r == r.amax(1, keepdim=True)
        return _nan_where_empty((at_max & m).any(1).to(r.dtype), m)


class RelevanceMassAccuracy:
    """The share of the relevance that falls on the object (see the module docstring)."""

    higher_is_better = True

    def __call__(self, model: nn.Module | None, x: Tensor, attribution: Tensor, target: Target = None, *,
                 mask: Tensor) -> MetricResult:
        r, m = pixel_relevance_and_mask(attribution, mask)
        return _nan_where_empty((r * m).sum(1) / r.sum(1), m)


class RelevanceRankAccuracy:
    """The share of the n_m most relevant pixels that lie on the object (see the module docstring)."""

    higher_is_better = True

    def __call__(self, model: nn.Module | None, x: Tensor, attribution: Tensor, target: Target = None, *,
                 mask: Tensor) -> MetricResult:
        r, m = pixel_relevance_and_mask(attribution, mask)
        size = m.sum(1, keepdim=True)
        # the n_m-th largest value splits the top n_m (no argsort needed); of the pixels tied with it, the first
        # in index order are taken, as a stable descending sort would
        threshold = sorted_rows(r).gather(1, (r.shape[1] - size).clamp(max=r.shape[1] - 1))
        above, tied = r > threshold, r == threshold
        tied_taken = tied & (torch.cumsum(tied, dim=1) <= size - above.sum(1, keepdim=True))
        on_object = ((above | tied_taken) & m).sum(1)
        return _nan_where_empty(on_object.to(r.dtype) / size[:, 0].clamp(min=1), m)


class AttributionLocalisation:
    """The share of the absolute relevance that falls on the object (see the module docstring)."""

    higher_is_better = True

    def __call__(self, model: nn.Module | None, x: Tensor, attribution: Tensor, target: Target = None, *,
                 mask: Tensor) -> MetricResult:
        r, m = pixel_relevance_and_mask(attribution, mask)
        magnitude = r.abs()
        return _nan_where_empty((magnitude * m).sum(1) / (magnitude.sum(1) + 1e-9), m)
