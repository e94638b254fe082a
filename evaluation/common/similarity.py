"""Per-sample similarity of two batches of attributions, as Quantus 0.6.0's randomisation metrics compute it.

Both take (N, ...) tensors, compare row i of ``a`` with row i of ``b`` over the flattened values (Quantus reshapes
to (N, -1) before calling its similarity functions) and return (N,) on the inputs' device:

- ``spearman``: Pearson's correlation of the ranks, ties given their average rank (``scipy.stats.spearmanr``).
- ``ssim``: the structural similarity of ``skimage.metrics.structural_similarity`` on the flattened row (a 1-D
  signal, as Quantus calls it): windows of 7 consecutive values, K1 = 0.01, K2 = 0.03, sample covariances
  (7 / 6), data range = max - min over both rows, mean over the windows that fit inside the row.

``normalise_by_max`` is Quantus's default attribution normalisation, but per sample (Quantus divides by the
maximum over the whole batch, so a sample's score depends on the others in its batch).
"""
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from evaluation.common.ordering import stable_argsort

SSIM_WINDOW = 7  # skimage's window without Gaussian weights


def normalise_by_max(attribution: Tensor, absolute: bool = False, finite: bool = False) -> Tensor:
    """Each sample divided by its largest absolute value, flattened (N, n); an all-zero sample stays zero.

    ``finite``: refuse NaN and Inf, checked on the peaks (which any NaN or Inf reaches) instead of on every value."""
    flat = attribution.flatten(1)
    magnitude = flat.abs()
    peak = magnitude.amax(dim=1, keepdim=True)
    if finite and not torch.isfinite(peak).all():
        raise ValueError("attribution contains NaN or Inf values: fix the explanation or use torch.nan_to_num")
    return (magnitude if absolute else flat) / torch.where(peak > 0, peak, torch.ones_like(peak))


def average_ranks(values: Tensor) -> Tensor:
    """Ranks 1..n along each row of (N, n), tied values sharing the mean of their ranks."""
    n = values.shape[1]
    order = stable_argsort(values, descending=False)
    ordered = values.gather(1, order)
    starts_group = torch.ones_like(ordered, dtype=torch.bool)
    starts_group[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = torch.cumsum(starts_group, dim=1) - 1
    position = torch.arange(n, device=values.device, dtype=values.dtype).expand_as(ordered)
    first = torch.full_like(ordered, float(n)).scatter_reduce(1, group, position, "amin")
    count = torch.zeros_like(ordered).scatter_add(1, group, torch.ones_like(ordered))
    ranked = first.gather(1, group) + (count.gather(1, group) - 1) / 2 + 1
    return torch.empty_like(ranked).scatter_(1, order, ranked)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rank correlation of each pair of rows (NaN where a row is constant, as scipy)."""
    ra, rb = (average_ranks(t.flatten(1)) for t in (a, b))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / torch.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """skimage's structural similarity of each pair of flattened rows (see the module docstring)."""
    a, b = a.flatten(1), b.flatten(1)
    if a.shape[1] < SSIM_WINDOW:
        raise ValueError(f"ssim needs at least {SSIM_WINDOW} attribution values per sample, got {a.shape[1]}")
    both = torch.cat([a, b], dim=1)
    data_range = both.amax(1, keepdim=True) - both.amin(1, keepdim=True)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def window_mean(t: Tensor) -> Tensor:  # the windows that fit inside the row (skimage crops the rest)
        return F.avg_pool1d(t.unsqueeze(1), SSIM_WINDOW, stride=1).squeeze(1)

    covariance = SSIM_WINDOW / (SSIM_WINDOW - 1)
    ux, uy = window_mean(a), window_mean(b)
    vx = covariance * (window_mean(a * a) - ux * ux)
    vy = covariance * (window_mean(b * b) - uy * uy)
    vxy = covariance * (window_mean(a * b) - ux * uy)
    index = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return index.mean(1)


SIMILARITIES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"spearman": spearman, "ssim": ssim}


def similarity_function(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The similarity called ``name``, or a ValueError listing the choices."""
    if name not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {', '.join(map(repr, SIMILARITIES))}, got {name!r}")
    return SIMILARITIES[name]
