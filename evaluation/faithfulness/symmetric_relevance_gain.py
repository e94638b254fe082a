"""The headline faithfulness score: symmetric relevance gain, from a MoRF and a LeRF curve of the same metric."""
from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn

from evaluation.faithfulness.perturbation_curve import PerturbationResult
from evaluation.faithfulness.perturbation_metric import PerturbationMetric
from evaluation.faithfulness.pixel_flipping import PixelFlipping
from evaluation.faithfulness.scores import symmetric_relevance_gain
from xai.targets import Target


@dataclass(frozen=True)
class SymmetricRelevanceResult:
    """``morf`` and ``lerf`` curves of each sample; ``srg`` (N,) = AUC(LeRF) - AUC(MoRF), higher is better."""

    morf: PerturbationResult
    lerf: PerturbationResult

    @property
    def srg(self) -> Tensor:
        return symmetric_relevance_gain(self.lerf.auc, self.morf.auc)

    @property
    def fraction(self) -> Tensor:
        """(steps + 1,) the x axis of both curves: fraction flipped."""
        return self.morf.fraction

    @property
    def target(self) -> Tensor:
        return self.morf.target


@dataclass(frozen=True)
class SymmetricRelevanceGain:
    """Run ``metric`` (a PixelFlipping or RegionPerturbation; its ``order`` is ignored) in MoRF and LeRF order.

    SRG (Bluecher et al. 2024) rewards an attribution whose most relevant features destroy the score fast and whose
    least relevant features keep it: unlike MoRF alone it is not fooled by a baseline that destroys the score
    whatever is flipped. Both orders share the unperturbed forward pass and fill the same batches.
    """

    metric: PerturbationMetric = field(default_factory=PixelFlipping)
    higher_is_better: ClassVar[bool] = True

    def __post_init__(self):
        if not isinstance(self.metric, PerturbationMetric):
            raise TypeError(
                f"metric must be a PixelFlipping or RegionPerturbation, got {type(self.metric).__name__}"
            )

    def __call__(
        self, model: nn.Module, x: Tensor, attribution: Tensor, target: Target = None
    ) -> SymmetricRelevanceResult:
        morf, lerf = self.metric.curves(model, x, attribution, target, ("morf", "lerf"))
        return SymmetricRelevanceResult(morf=morf, lerf=lerf)
