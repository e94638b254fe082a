"""The values a flipped feature takes: a number, or one of the named baselines.

All are computed once from the original (unperturbed) image, so a flipped feature keeps its value in later steps:

- a number b: every flipped value is b.
- ``"mean"``: the mean of the sample's channel, mean_{h,w} x[n, c, h, w] (per sample, per channel).
- ``"blur"``: the image convolved with a Gaussian of standard deviation ``blur_sigma`` pixels (default max(H, W) / 16),
  separable, with replicated borders: flipping keeps the coarse shape and removes the detail.
- ``"uniform"``: min_n + u * (max_n - min_n), with min_n, max_n the sample's value range over all channels and
  u ~ U(0, 1)^(C, H, W) drawn once from ``torch.Generator().manual_seed(seed)`` on the CPU. The same u serves
  every sample, so results do not depend on the batch composition, the batch size or the device.
"""
import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor

NAMED_BASELINES = ("mean", "blur", "uniform")
Baseline = float | str


def check_baseline(baseline: Baseline) -> None:
    if isinstance(baseline, bool) or not isinstance(baseline, (Real, str)):
        raise TypeError(f"baseline must be a number or one of {NAMED_BASELINES}, got {type(baseline).__name__}")
    if isinstance(baseline, str) and baseline not in NAMED_BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}: use a number or one of {NAMED_BASELINES}")
    if isinstance(baseline, Real) and not math.isfinite(baseline):
        raise ValueError(f"baseline must be finite, got {baseline}")


def make_baseline(baseline: Baseline, x: Tensor, seed: int = 0, blur_sigma: float | None = None) -> Tensor:
    """The tensor (shape and device of ``x``) whose values replace the flipped features of ``x`` (N, C, H, W)."""
    check_baseline(baseline)
    if not isinstance(baseline, str):
        return torch.full_like(x, float(baseline))
    if baseline == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous()
    if baseline == "blur":
        return gaussian_blur(x, blur_sigma if blur_sigma is not None else max(x.shape[2:]) / 16)
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(x.shape[1:], generator=generator, dtype=x.dtype).to(x.device)
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    return low + u * (high - low)


def cpu_generator(seed: int | None) -> torch.Generator:
    """The CPU generator the metrics draw from: seeded with ``seed``, or freshly seeded when it is None."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of each channel, kernel radius ceil(3 sigma), replicated borders."""
    if not sigma > 0:
        raise ValueError(f"blur_sigma must be positive, got {sigma}")
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    n, c, h, w = x.shape
    flat = x.reshape(n * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w)
