"""Complexity of attributions: how concentrated an explanation is, with no forward pass at all.

Both follow Quantus 0.6.0's definitions (its defaults: each attribution divided by its largest absolute value, then
its absolute value taken; a = |A| / max |A| flattened over channels and pixels, n values):

- ``Sparseness`` (Chalasani et al. 2020): the Gini index of a + 1e-7, sum_i (2i - n - 1) a_(i) / (n sum_i a_(i)) over
  the values sorted ascending. 0 = uniform, (n - 1) / n = one value holds everything. Higher is better.
- ``Complexity`` (Bhatt et al. 2020): the entropy of p = a / sum(a), -sum_i p_i log(p_i + 1e-12). 0 = one value
  holds everything, log n = uniform (also for an all-zero attribution, where Quantus gives NaN). Lower is better.

All samples at once on the attribution's device.
"""

import torch
from torch import Tensor, nn

from evaluation.common.ordering import sorted_rows
from evaluation.common.result import MetricResult
from evaluation.common.similarity import normalise_by_max
from xai.targets import Target


def _magnitudes(attribution: Tensor) -> Tensor:
    """|A| / max |A| per sample, flattened (N, n); an all-zero attribution stays zero (as Quantus)."""
    if not isinstance(attribution, Tensor) or attribution.dim() < 2 or not attribution.dtype.is_floating_point:
        raise TypeError("attribution must be a floating-point tensor (N, ...) with one row per sample")
    return normalise_by_max(attribution.detach(), absolute=True, finite=True)


class Sparseness:
    """The Gini index of the attribution's magnitudes (see the module docstring)."""

    higher_is_better = True

    def __call__(self, model: nn.Module | None, x: Tensor, attribution: Tensor, target: Target = None) -> MetricResult:
        """``model``, ``x`` and ``target`` are unused (the call shape of every metric)."""
        a = sorted_rows(_magnitudes(attribution) + 1e-7)
        n = a.shape[1]
        rank = torch.arange(1, n + 1, dtype=a.dtype, device=a.device)
        return MetricResult(((2 * rank - n - 1) * a).sum(1) / (n * a.sum(1)))


class Complexity:
    """The entropy of the attribution's magnitudes as a distribution (see the module docstring)."""

    higher_is_better = False

    def __call__(self, model: nn.Module | None, x: Tensor, attribution: Tensor, target: Target = None) -> MetricResult:
        """``model``, ``x`` and ``target`` are unused (the call shape of every metric)."""
        a = _magnitudes(attribution)
        total = a.sum(1, keepdim=True)
        p = torch.where(total > 0, a / torch.where(total > 0, total, 1.0), 1.0 / a.shape[1])  # all zero: uniform
        return MetricResult(-(p * torch.log(p + 1e-12)).sum(1))
