"""Region perturbation (Samek et al. 2017): flip square regions in order of their summed relevance."""
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from evaluation.faithfulness.perturbation_metric import PerturbationMetric
from xai.validation import positive_int


@dataclass(frozen=True)
class RegionPerturbation(PerturbationMetric):
    """Flip square regions of side ``region_size``, all channels, ``regions_in_step`` per step (or over ``steps``).

    The regions tile the image on a grid from the top-left corner (regions on the right and bottom border are cut
    to the image when its side is not a multiple of ``region_size``). A region's relevance is the attribution summed
    over its pixels and channels, R_j = sum_{(c,h,w) in region j} a[c, h, w]; MoRF flips the largest R_j first.
    Samek et al. flip overlapping 9x9 regions around the most relevant remaining pixel; a fixed grid, as in Quantus,
    makes every region equally large and the ranking a single sort. The x axis (``fraction``) counts regions.
    Without ``regions_in_step`` and ``steps`` one region is flipped per step. Other options as ``PixelFlipping``;
    ``region_size=1`` gives ``PixelFlipping(unit="pixel")``.
    """

    region_size: int = 8
    regions_in_step: int | None = None

    def __post_init__(self):
        self._check_options()
        positive_int(self.region_size, "region_size", "side of the square in pixels")
        if self.regions_in_step is not None and self.steps is not None:
            raise ValueError("give regions_in_step or steps, not both")

    def _grid(self, x: Tensor) -> tuple[int, int]:
        h, w = x.shape[2:]
        size = self.region_size
        if size > min(h, w):
            raise ValueError(f"region_size={size} is larger than the {h}x{w} image: use at most {min(h, w)}")
        return -(-h // size), -(-w // size)

    def _schedule(self, x: Tensor) -> tuple[int, int | None, int | None, str]:
        rows, cols = self._grid(x)
        what = f"{self.region_size}x{self.region_size} regions of a {x.shape[2]}x{x.shape[3]} image"
        if self.regions_in_step is None and self.steps is None:
            return rows * cols, 1, None, what
        return rows * cols, self.regions_in_step, self.steps, what

    def _unit_relevance(self, attribution: Tensor, x: Tensor) -> Tensor:
        rows, cols = self._grid(x)
        size = self.region_size
        n, _, h, w = attribution.shape
        summed = F.pad(attribution.sum(dim=1), (0, cols * size - w, 0, rows * size - h))
        return summed.view(n, rows, size, cols, size).sum(dim=(2, 4)).reshape(n, -1)

    def _spread(self, unit_flip_step: Tensor, x: Tensor) -> Tensor:
        rows, cols = self._grid(x)
        n, _, h, w = x.shape
        grid = unit_flip_step.view(n, 1, rows, cols)
        pixels = grid.repeat_interleave(self.region_size, dim=2).repeat_interleave(self.region_size, dim=3)
        return pixels[:, :, :h, :w]
