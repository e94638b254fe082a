"""Deletion and Insertion (Petsiuk et al. 2018, RISE): the area under the target probability as pixels leave or
enter the image in order of relevance (most relevant first; ranked by the attribution summed over channels).

- ``Deletion``: pixels (all channels) of x are replaced, ``pixels_in_step`` per step, by a canvas (0 by default,
  as in RISE); the curve c_s = f(x after s steps). A faithful attribution makes it fall fast: lower is better.
- ``Insertion``: pixels of x are put, in the same order, into the canvas (blurred x by default, as in RISE); the
  curve starts at the canvas and ends at x. A faithful attribution makes it rise fast: higher is better.

score = AUC = the trapezoid area under c over the fraction of pixels moved, in [0, 1]
(``evaluation.faithfulness.scores.auc``).
Both are ``PixelFlipping(unit="pixel", order="morf")`` on its batched engine: Deletion as is, Insertion with the
roles of image and canvas swapped. ``pixels_in_step`` / ``steps`` and the other options as in ``PixelFlipping``
(without either: 32 steps).
"""
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from evaluation.common.result import MetricResult
from evaluation.faithfulness.baselines import Baseline
from evaluation.faithfulness.perturbation_curve import PerturbationResult, perturbation_curves
from evaluation.faithfulness.perturbed_scores import perturbed_scores
from evaluation.faithfulness.pixel_flipping import PixelFlipping
from xai.targets import Target


@dataclass(frozen=True)
class CurveResult(MetricResult):
    """``scores`` (N,) the AUC of ``curve``, the per-sample curves (column 0 = nothing moved yet)."""

    curve: PerturbationResult


@dataclass(frozen=True)
class _CurveMetric:
    pixels_in_step: int | None = None
    steps: int | None = None
    baseline: Baseline = 0.0
    softmax: bool = True
    batch_size: int = 64
    seed: int = 0
    blur_sigma: float | None = None
    progress: bool = True

    def __post_init__(self):
        self.flipping  # check the options now

    @property
    def flipping(self) -> PixelFlipping:
        return PixelFlipping(
            features_in_step=self.pixels_in_step, steps=self.steps, unit="pixel", baseline=self.baseline,
            order="morf", softmax=self.softmax, batch_size=self.batch_size, seed=self.seed,
            blur_sigma=self.blur_sigma, progress=self.progress,
        )


@dataclass(frozen=True)
class Deletion(_CurveMetric):
    """Remove the most relevant pixels first into a canvas (``baseline``, default 0); see the module docstring."""

    higher_is_better: ClassVar[bool] = False

    def __call__(self, model: nn.Module, x: Tensor, attribution: Tensor, target: Target = None) -> CurveResult:
        curve = self.flipping(model, x, attribution, target)
        return CurveResult(curve.auc, curve)


@dataclass(frozen=True)
class Insertion(_CurveMetric):
    """Insert the most relevant pixels first into a canvas (``baseline``, default "blur"); see the module docstring."""

    baseline: Baseline = "blur"
    higher_is_better: ClassVar[bool] = True

    def __call__(self, model: nn.Module, x: Tensor, attribution: Tensor, target: Target = None) -> CurveResult:
        flipping = self.flipping
        flips, steps, fraction, canvas = flipping.flip_plan(model, x, attribution, ("morf",))
        canvas = torch.as_tensor(canvas, dtype=x.dtype, device=x.device).expand_as(x)
        # the target of x, not of the canvas the engine starts from
        resolved, _, _ = perturbed_scores(model, x, target, self.softmax, 0, None, self.batch_size, False, "")
        resolved, (curve,) = perturbation_curves(
            model, canvas, x.detach(), flips, steps, resolved, self.softmax, self.batch_size, self.progress,
        )
        result = PerturbationResult(curve, fraction, resolved, "morf")
        return CurveResult(result.auc, result)
