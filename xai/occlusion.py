"""Occlusion (Zeiler & Fergus 2014): how much the target logit drops when a window of the image is covered.

A square ``window`` slides over the image in steps of ``stride`` (all channels at once); window positions start at
0, s, 2s, ... and a last one is added, cropped at the border, when (size - window) is not a multiple of the stride,
exactly as Captum's ``Occlusion(sliding_window_shapes=(C, w, w), strides=(C, s, s))``. Covering replaces the pixels
by ``baseline``. A pixel's attribution is the mean, over the windows that cover it, of y_t(x) - y_t(x covered).
All windows of a batch go through the model ``batch_size`` inputs at a time.
"""
import math

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from xai.analyzer import Analyzer, predict
from xai.batched_gradients import check_batch_size
from xai.validation import finite_number


def window_masks(height: int, width: int, window: int, stride: int, like: Tensor) -> Tensor:
    """(P, H, W) masks, 1 inside each window position, in Captum's order (rows vary fastest)."""
    def starts(size: int) -> list[int]:
        return [i * stride for i in range(math.ceil((size - window) / stride) + 1)]

    masks = torch.zeros((len(starts(height)) * len(starts(width)), height, width), dtype=like.dtype, device=like.device)
    for p, (left, top) in enumerate((left, top) for left in starts(width) for top in starts(height)):
        masks[p, top : top + window, left : left + window] = 1
    return masks


class Occlusion(Analyzer):
    """The mean drop of the target logit over the windows covering each pixel (see the module docstring)."""

    def __init__(self, model: nn.Module, window: int = 8, stride: int = 4, baseline: float = 0.0,
                 batch_size: int = 64):
        super().__init__(model)
        for name, value in (("window", window), ("stride", stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int (pixels), got {value!r}")
        if stride > window:
            raise ValueError(f"stride={stride} is larger than window={window}: pixels between windows would get no "
                             "attribution; use stride <= window")
        self.window, self.stride = window, stride
        self.baseline = finite_number(baseline, "baseline")
        self.batch_size = check_batch_size(batch_size)

    def _attribute(self, x, target):
        if x.dim() != 4:
            raise ValueError(f"Occlusion needs images (N, C, H, W), got shape {tuple(x.shape)}")
        n, _, height, width = x.shape
        if self.window > min(height, width):
            raise ValueError(f"window={self.window} is larger than the {height}x{width} image: use at most "
                             f"{min(height, width)}")
        output, resolved = predict(self.model, x, target)
        unoccluded = output.gather(1, resolved[:, None])[:, 0]
        masks = window_masks(height, width, self.window, self.stride, x)
        total = torch.zeros((n, height, width), dtype=x.dtype, device=x.device)
        jobs = masks.shape[0] * n  # job j: window j // n on sample j % n
        starts = range(0, jobs, self.batch_size)
        with torch.no_grad():
            for start in tqdm(starts, desc="Occlusion", leave=False, disable=None if len(starts) > 1 else True):
                job = torch.arange(start, min(start + self.batch_size, jobs), device=x.device)
                window, sample = job // n, job % n
                covered = masks[window][:, None]
                inputs = x[sample] * (1 - covered) + self.baseline * covered
                score = self.model(inputs).gather(1, resolved[sample][:, None])[:, 0]
                total.index_add_(0, sample, (unoccluded[sample] - score)[:, None, None] * masks[window])
        attribution = total / masks.sum(0)
        return attribution[:, None].expand_as(x).contiguous(), output, resolved
