"""Faithfulness correlation (Bhatt et al. 2020), as Quantus 0.6.0's ``FaithfulnessCorrelation``.

For each sample, ``nr_runs`` times: draw a random subset S of ``subset_size`` input values (of all C * H * W; a
one-channel attribution is copied to every channel, as Quantus does), set them to the baseline, and record

    attribution sum  s_r = sum_{i in S} a_i         score drop  d_r = f(x) - f(x with x_S = baseline)

The score is the Pearson correlation of (s_r) and (d_r) over the runs: 1 = the attribution predicts exactly how
much each subset matters. Higher is better. NaN when the attribution sums or the drops are constant (as scipy's
pearsonr, which Quantus calls). Quantus's default ``normalise`` (divide by the largest |a|) does not change a
correlation; its default baseline "black" is the sample's minimum (0 for images in [0, 1]).

The subsets are drawn on the CPU from a generator seeded with ``seed``: run after run, one (N, C * H * W) uniform
draw whose ``subset_size`` largest values pick each sample's subset. They are in the result (``subsets``).
"""
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from evaluation.common.inputs import check_metric_inputs
from evaluation.common.result import MetricResult
from evaluation.faithfulness.baselines import Baseline, check_baseline, cpu_generator, make_baseline
from evaluation.faithfulness.perturbed_scores import perturbed_scores
from xai.model_guard import model_device
from xai.targets import Target
from xai.validation import check_batch_size, positive_int


@dataclass(frozen=True)
class FaithfulnessCorrelationResult(MetricResult):
    """``scores`` (N,) the correlations; ``attribution_sums`` and ``score_drops`` (N, nr_runs) the pairs behind
    them; ``subsets`` (N, nr_runs, subset_size) the flat indices (into C * H * W) of the values set to the baseline."""

    attribution_sums: Tensor
    score_drops: Tensor
    subsets: Tensor


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of the rows of ``a`` and ``b`` (N, R)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / torch.sqrt((a * a).sum(1) * (b * b).sum(1))


@dataclass(frozen=True)
class FaithfulnessCorrelation:
    """``nr_runs`` random subsets of ``subset_size`` values per sample (see the module docstring).

    ``baseline``: a number or "mean", "blur", "uniform" (``evaluation.faithfulness.baselines``; ``blur_sigma`` sets
    "blur").
    ``softmax``: correlate with the softmax probability (True) or the logit (False, Quantus's default).
    ``seed``: an int for reproducible subsets, None for fresh ones. ``batch_size`` bounds the inputs per forward.
    """

    nr_runs: int = 100
    subset_size: int = 224
    baseline: Baseline = 0.0
    softmax: bool = False
    batch_size: int = 64
    seed: int | None = None
    blur_sigma: float | None = None
    progress: bool = True
    higher_is_better: ClassVar[bool] = True

    def __post_init__(self):
        for name in ("nr_runs", "subset_size"):
            positive_int(getattr(self, name), name)
        if self.nr_runs < 2:
            raise ValueError(f"nr_runs must be at least 2 (a correlation needs two runs), got {self.nr_runs}")
        check_baseline(self.baseline)
        check_batch_size(self.batch_size)

    def __call__(
        self, model: nn.Module, x: Tensor, attribution: Tensor, target: Target = None
    ) -> FaithfulnessCorrelationResult:
        check_metric_inputs(model, x, attribution)
        n = x.shape[0]
        features = x[0].numel()
        if self.subset_size > features:
            raise ValueError(f"subset_size={self.subset_size} is more than the {features} values of a "
                             f"{'x'.join(map(str, x.shape[1:]))} input: use at most {features}")
        device = model_device(model)
        subsets = self.draw_subsets(n, features)
        flat_attribution = attribution.detach().to(x.dtype).expand_as(x).reshape(n, -1).cpu()
        sums = flat_attribution[torch.arange(n)[:, None, None], subsets].sum(dim=2)
        x_flat = x.detach().reshape(n, -1).to(device)
        fill = None if not isinstance(self.baseline, str) else make_baseline(
            self.baseline, x.detach(), seed=self.seed or 0, blur_sigma=self.blur_sigma).reshape(n, -1).to(device)
        rows_subsets = subsets.to(device).reshape(n * self.nr_runs, -1)

        def build(start: int, stop: int) -> tuple[Tensor, Tensor]:
            sample = torch.arange(start, stop, device=device) // self.nr_runs
            index = rows_subsets[start:stop]
            inputs = x_flat[sample]
            if fill is None:
                inputs.scatter_(1, index, float(self.baseline))
            else:
                inputs.scatter_(1, index, fill[sample].gather(1, index))
            return inputs.view(stop - start, *x.shape[1:]), sample

        _, unperturbed, scores = perturbed_scores(
            model, x, target, self.softmax, n * self.nr_runs, build, self.batch_size, self.progress,
            "faithfulness correlation",
        )
        drops = (unperturbed[:, None] - scores.view(n, self.nr_runs)).to(x.device)
        sums = sums.to(device=x.device, dtype=drops.dtype)
        return FaithfulnessCorrelationResult(pearson(sums, drops), sums, drops, subsets.to(x.device))

    def draw_subsets(self, n: int, features: int) -> Tensor:
        """(n, nr_runs, subset_size) flat indices, drawn as the module docstring says."""
        # one draw for all runs: the CPU generator fills it in order, so it equals run-after-run draws
        draws = torch.rand((self.nr_runs, n, features), generator=cpu_generator(self.seed))
        return draws.topk(self.subset_size, dim=2).indices.transpose(0, 1).contiguous()
