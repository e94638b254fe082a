"""What PixelFlipping and RegionPerturbation share: input checks, baseline, ranking once, the batched engine."""
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from evaluation.common.inputs import check_metric_inputs
from evaluation.common.ordering import check_order, flip_step, flipped_fraction, number_of_steps, step_of_rank
from evaluation.faithfulness.baselines import check_baseline, make_baseline
from evaluation.faithfulness.perturbation_curve import PerturbationResult, perturbation_curves
from xai.model_guard import model_device
from xai.targets import Target
from xai.validation import positive_int


@dataclass(frozen=True, kw_only=True)
class PerturbationMetric(ABC):
    """Flip units of the input in order of relevance and track the target score (the subclass defines the units).

    The options every metric shares are keyword-only fields here; subclasses are frozen dataclasses that add their
    own unit options (which come first, positionally).
    """

    baseline: float | str = 0.0
    order: str = "morf"
    softmax: bool = True
    steps: int | None = None
    batch_size: int = 64
    seed: int = 0
    blur_sigma: float | None = None
    progress: bool = True

    def _check_options(self) -> None:
        check_baseline(self.baseline)
        check_order(self.order)
        positive_int(self.batch_size, "batch_size")

    def __call__(self, model: nn.Module, x: Tensor, attribution: Tensor, target: Target = None) -> PerturbationResult:
        """The curve of each sample in ``self.order``; ``target`` as for analyzers (None = the top class on x)."""
        return self.curves(model, x, attribution, target, (self.order,))[0]

    def curves(
        self, model: nn.Module, x: Tensor, attribution: Tensor, target: Target, orders: Sequence[str]
    ) -> list[PerturbationResult]:
        """One result per order, sharing the unperturbed forward pass and the batches."""
        flips, steps, fraction, baseline = self.flip_plan(model, x, attribution, orders)
        target, curves = perturbation_curves(
            model, x.detach(), baseline, flips, steps, target, self.softmax, self.batch_size, self.progress,
        )
        return [PerturbationResult(c, fraction, target, order) for c, order in zip(curves, orders)]

    def flip_plan(
        self, model: nn.Module, x: Tensor, attribution: Tensor, orders: Sequence[str]
    ) -> tuple[list[Tensor], int, Tensor, Tensor | float]:
        """Check the inputs, then (flip-step map per order, number of steps, the curves' x axis, the baseline).

        The baseline stays a number when it is one (the engine fills it in without gathering a tensor).
        """
        check_metric_inputs(model, x, attribution)
        step_of = step_of_rank(*self._schedule(x))
        # rank where the model runs: one sort per sample on that device
        relevance = self._unit_relevance(attribution.to(device=model_device(model), dtype=x.dtype), x)
        flips = [self._spread(flip_step(relevance, order, step_of), x) for order in orders]
        baseline = self.baseline if not isinstance(self.baseline, str) else make_baseline(
            self.baseline, x.detach(), self.seed, self.blur_sigma
        )
        fraction = flipped_fraction(step_of).to(device=x.device, dtype=x.dtype)
        return flips, number_of_steps(step_of), fraction, baseline

    def steps_for(self, shape: Sequence[int]) -> int:
        """The number of flip steps (forward passes per sample and order) on inputs of ``shape`` (C, H, W)."""
        return number_of_steps(step_of_rank(*self._schedule(torch.empty((1, *shape), device="meta"))))

    @abstractmethod
    def _schedule(self, x: Tensor) -> tuple[int, int | None, int | None, str]:
        """(number of units of ``x``, units per step, number of steps, the units in words for error messages).

        Exactly one of units per step and number of steps is given.
        """

    @abstractmethod
    def _unit_relevance(self, attribution: Tensor, x: Tensor) -> Tensor:
        """(N, units): the relevance by which the units are ranked."""

    @abstractmethod
    def _spread(self, unit_flip_step: Tensor, x: Tensor) -> Tensor:
        """Map the (N, units) flip steps onto the input: (N, C or 1, H, W)."""
