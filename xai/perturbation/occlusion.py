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
from xai.validation import check_batch_size, finite_number, positive_int


def window_starts(size: int, window: int, stride: int) -> Tensor:
    """Where the windows start along one side: 0, s, 2s, ..., the last cropped at the border (Captum's positions)."""
    return torch.arange(math.ceil((size - window) / stride) + 1) * stride


def window_masks(tops: Tensor, lefts: Tensor, height: int, width: int, window: int, like: Tensor) -> Tensor:
    """(P, H, W) masks, 1 inside the windows at (tops[p], lefts[p]): built per chunk, never for all windows at once."""
    rows = torch.arange(height, device=like.device)
    cols = torch.arange(width, device=like.device)
    inside_rows = (rows >= tops[:, None]) & (rows < tops[:, None] + window)
    inside_cols = (cols >= lefts[:, None]) & (cols < lefts[:, None] + window)
    return (inside_rows[:, :, None] & inside_cols[:, None, :]).to(like.dtype)


class Occlusion(Analyzer):
    """The mean drop of the target logit over the windows covering each pixel (see the module docstring)."""

    def __init__(self, model: nn.Module, window: int = 8, stride: int = 4, baseline: float = 0.0,
                 batch_size: int = 64):
        super().__init__(model)
        for name, value in (("window", window), ("stride", stride)):
            positive_int(value, name, "pixels")
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
        tops = window_starts(height, self.window, self.stride).to(x.device)
        lefts = window_starts(width, self.window, self.stride).to(x.device)
        # windows in Captum's order (rows vary fastest); window p covers rows tops[p % T], columns lefts[p // T]
        window_tops, window_lefts = tops.repeat(len(lefts)), lefts.repeat_interleave(len(tops))
        total = torch.zeros((n, height, width), dtype=x.dtype, device=x.device)
        jobs = len(window_tops) * n  # job j: window j // n on sample j % n
        starts = range(0, jobs, self.batch_size)
        with torch.no_grad():
            for start in tqdm(starts, desc="Occlusion", leave=False, disable=None if len(starts) > 1 else True):
                job = torch.arange(start, min(start + self.batch_size, jobs), device=x.device)
                window, sample = job // n, job % n
                masks = window_masks(window_tops[window], window_lefts[window], height, width, self.window, x)
                covered = masks[:, None]
                inputs = x[sample] * (1 - covered) + self.baseline * covered
                score = self.model(inputs).gather(1, resolved[sample][:, None])[:, 0]
                total.index_add_(0, sample, (unoccluded[sample] - score)[:, None, None] * masks)
        # windows form a grid, so the number covering a pixel is (windows over its row) x (windows over its column)
        row_cover = window_masks(tops, torch.zeros_like(tops), height, 1, self.window, x).sum(0)[:, 0]
        col_cover = window_masks(torch.zeros_like(lefts), lefts, 1, width, self.window, x).sum(0)[0]
        attribution = total / (row_cover[:, None] * col_cover[None, :])
        return attribution[:, None].expand_as(x).contiguous(), output, resolved
