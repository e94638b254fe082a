"""The result every per-sample metric returns."""
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class MetricResult:
    """``scores`` (N,): one score per sample."""

    scores: Tensor
