"""Pixel flipping (Bach et al. 2015): flip features in order of relevance and track the target score."""
from dataclasses import dataclass

from torch import Tensor

from evaluation.faithfulness.perturbation_metric import PerturbationMetric

UNITS = ("pixel", "channel")
DEFAULT_STEPS = 32


@dataclass(frozen=True)
class PixelFlipping(PerturbationMetric):
    """Flip ``features_in_step`` features per step (or spread them over ``steps`` steps; default 32 steps).

    ``unit="pixel"``: a feature is a pixel with all its channels, ranked by the attribution summed over channels.
    ``unit="channel"``: a feature is one channel value, ranked on its own (a one-channel attribution is copied to
    every channel); this is Quantus 0.6.0's PixelFlipping, and ``curve[:, 1:]`` equals its curve.
    ``order``: "morf" flips the most relevant first, "lerf" the least relevant first (ties: lower index first).
    ``baseline``: a number, "mean", "blur" or "uniform" (see ``evaluation.faithfulness.baselines``); ``seed`` seeds
    "uniform",
    ``blur_sigma`` sets "blur". ``softmax``: track the softmax probability (True) or the logit (False).
    ``batch_size`` bounds the number of perturbed inputs per forward pass.
    """

    features_in_step: int | None = None
    unit: str = "pixel"

    def __post_init__(self):
        self._check_options()
        if self.unit not in UNITS:
            raise ValueError(
                f"unknown unit {self.unit!r}: use 'pixel' (all channels of a pixel at once) or 'channel' (each value)"
            )
        if self.features_in_step is not None and self.steps is not None:
            raise ValueError("give features_in_step or steps, not both")

    def _schedule(self, x: Tensor) -> tuple[int, int | None, int | None, str]:
        n, c, h, w = x.shape
        units = h * w if self.unit == "pixel" else c * h * w
        what = f"{self.unit} features of a {c}x{h}x{w} input"
        if self.features_in_step is None and self.steps is None:
            return units, None, min(DEFAULT_STEPS, units), what
        return units, self.features_in_step, self.steps, what

    def _unit_relevance(self, attribution: Tensor, x: Tensor) -> Tensor:
        n = x.shape[0]
        if self.unit == "pixel":
            return attribution.sum(dim=1).reshape(n, -1)
        return attribution.expand_as(x).reshape(n, -1)

    def _spread(self, unit_flip_step: Tensor, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        if self.unit == "pixel":
            return unit_flip_step.view(n, 1, h, w)
        return unit_flip_step.view(n, c, h, w)
