"""ROAD, RemOve And Debias (Rong, Leemann et al. 2022): remove pixels by relevance and impute them from their
neighbours (``evaluation.faithfulness.imputation``), so that the removal itself leaks no shape the model could read.

Pixels are ranked by the attribution summed over channels (ties: lower index first). For each fraction p in
``percentages`` the floor(p * H * W) most (MoRF) or least (LeRF) relevant pixels are removed from the original
image, all channels, filled by noisy linear imputation, and the model scores the target (softmax probability or
logit). The curves c(p) over p give

    AUC = trapezoid area under c over p            combined (order="both") = AUC(LeRF) - AUC(MoRF)

the combined score being the project's symmetric relevance gain (higher is better); order="morf" scores AUC(MoRF)
(lower is better), order="lerf" AUC(LeRF) (higher is better). Both curves share the x axis "fraction removed"
(the ROAD authors' code indexes LeRF by the fraction kept instead: their LeRF at p is ours at 1 - p). pytorch-grad-cam's ROADCombined is
(mean LeRF - mean MoRF change of confidence) / 2 over its percentiles: a rescaled version of the same quantity.

Rows (order, percentage, sample) are imputed chunk by chunk, ``batch_size`` at a time, one sparse solve per chunk,
and each chunk goes through the model at once; a fraction that removes nothing reuses the unperturbed score.
The imputation noise comes from one CPU generator seeded with ``seed``, one draw per row in row order.
"""
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from evaluation.common.inputs import check_metric_inputs
from evaluation.common.ordering import flip_step
from evaluation.common.result import MetricResult
from evaluation.faithfulness.baselines import cpu_generator
from evaluation.faithfulness.imputation import noisy_linear_imputation
from evaluation.faithfulness.perturbation_curve import PerturbationResult
from evaluation.faithfulness.perturbed_scores import perturbed_scores
from evaluation.faithfulness.scores import symmetric_relevance_gain
from xai.model_guard import model_device
from xai.targets import Target
from xai.validation import check_batch_size, finite_number

ROAD_ORDERS = {"both": ("morf", "lerf"), "morf": ("morf",), "lerf": ("lerf",)}


@dataclass(frozen=True)
class ROADResult(MetricResult):
    """``scores`` (N,) as the order asks; ``morf`` and ``lerf`` the curves (None when not computed), whose
    ``fraction`` is the percentages."""

    morf: PerturbationResult | None
    lerf: PerturbationResult | None


@dataclass(frozen=True)
class ROAD:
    """Remove-and-impute curves over ``percentages`` (fractions in [0, 1), increasing); see the module docstring.

    ``noise``: standard deviation of the imputation noise (0.01 as in ROAD). ``higher_is_better`` of the class is
    that of the default ``order="both"``; an instance with ``order="morf"`` has it False.
    """

    percentages: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    order: str = "both"
    noise: float = 0.01
    softmax: bool = True
    batch_size: int = 64
    seed: int | None = None
    progress: bool = True
    higher_is_better: ClassVar[bool] = True

    def __post_init__(self):
        if self.order not in ROAD_ORDERS:
            raise ValueError(f"unknown order {self.order!r}: use 'both' (AUC(LeRF) - AUC(MoRF)), 'morf' or 'lerf'")
        p = list(self.percentages) if isinstance(self.percentages, Sequence) else None
        if not p or len(p) < 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in p):
            raise ValueError(f"percentages must be at least two fractions in [0, 1), got {self.percentages!r}")
        if not all(0 <= v < 1 for v in p) or any(b <= a for a, b in zip(p, p[1:])):
            raise ValueError(f"percentages must increase and lie in [0, 1) (1 would remove every pixel), got {p}")
        finite_number(self.noise, "noise", minimum=0.0)
        check_batch_size(self.batch_size)
        object.__setattr__(self, "higher_is_better", self.order != "morf")

    def __call__(self, model: nn.Module, x: Tensor, attribution: Tensor, target: Target = None) -> ROADResult:
        check_metric_inputs(model, x, attribution)
        n, _, h, w = x.shape
        orders = ROAD_ORDERS[self.order]
        device = model_device(model)
        relevance = attribution.detach().to(x.dtype).sum(dim=1).reshape(n, -1).cpu()
        rank = {o: flip_step(relevance, o, torch.arange(h * w)).view(n, h, w) for o in orders}  # 0 = removed first
        removed_count = [int(p * h * w) for p in self.percentages]
        # rows: one block of n samples per (order, percentage) that removes something
        blocks = [(o, count) for o in orders for count in removed_count if count > 0]
        x_cpu = x.detach().cpu()
        generator = cpu_generator(self.seed)

        def build(start: int, stop: int) -> tuple[Tensor, Tensor]:
            row = torch.arange(start, stop)
            sample = row % n
            removed = torch.stack([rank[blocks[r // n][0]][r % n] < blocks[r // n][1] for r in row.tolist()])
            imputed = noisy_linear_imputation(x_cpu[sample], removed, self.noise, generator=generator)
            return imputed.to(device), sample.to(device)

        resolved, unperturbed, scores = perturbed_scores(
            model, x, target, self.softmax, len(blocks) * n, build, self.batch_size, self.progress, "ROAD",
        )
        fraction = torch.tensor(self.percentages, dtype=x.dtype, device=x.device)
        block_scores = iter(scores.to(x.device).view(-1, n))
        curves = {}
        for o in orders:
            columns = [next(block_scores) if count > 0 else unperturbed.to(x.device) for count in removed_count]
            curves[o] = PerturbationResult(torch.stack(columns, dim=1), fraction, resolved.to(x.device), o)
        morf, lerf = curves.get("morf"), curves.get("lerf")
        if self.order == "both":
            score = symmetric_relevance_gain(lerf.auc, morf.auc)
        else:
            score = curves[self.order].auc
        return ROADResult(score, morf, lerf)
