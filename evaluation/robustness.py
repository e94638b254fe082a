"""Robustness of explanations: how much the explanation moves when the input moves a little.

Each sample x (attribution A) is copied ``nr_samples`` times with noise, x'_j = x + delta_j; every copy is explained
for the sample's target (E(x'_j)); the copies of all samples go through the explainer ``batch_size`` at a time.

- ``MaxSensitivity`` / ``AvgSensitivity`` (Yeh et al. 2019), as Quantus 0.6.0's MaxSensitivity / AvgSensitivity
  and Captum's ``sensitivity_max``: delta_j ~ U[-r, r]^d (the L-infinity ball of radius ``perturb_radius``),
  score = max_j (resp. mean_j) ||E(x'_j) - A||_F / ||A||_F. Where ||A|| = 0 the denominator is 1 (Captum's guard;
  Quantus divides by zero).
- ``LocalLipschitzEstimate`` (Alvarez-Melis & Jaakkola 2018), as Quantus's: delta_j ~ N(mean, std^2)^d,
  score = max_j ||n(E(x'_j)) - n(A)||_2 / (||x'_j - x||_2 + 1e-10), with n(a) = a / max |a| per explanation
  when ``normalise`` (Quantus's default normalisation, which Quantus takes over the whole batch instead: its
  score of a sample then depends on the other samples of the batch; equal to ours for one sample per batch).

Quantus's defaults: r = 0.2, 200 copies; LocalLipschitzEstimate std 0.1, mean 0, 200 copies. Captum's
``sensitivity_max`` defaults to r = 0.02 and 10 copies. The noise comes from a CPU generator seeded with ``seed``
(``None``: a fresh seed from torch's global generator), drawn chunk by chunk in the input's dtype. Lower is better.
"""
from typing import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from evaluation.common.explainer import Explainer, check_explainer, check_seed, checked_inputs, chunks, explain
from evaluation.common.result import MetricResult
from evaluation.common.similarity import normalise_by_max
from xai.analyzer import predict
from xai.model_guard import borrowed
from xai.targets import Target
from xai.validation import check_batch_size, finite_number, positive_int

# distance(x rows, x' rows, A rows, E(x') rows) -> (rows,) per copy
CopyScore = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
# noise(shape, generator, dtype) -> a draw of that shape on the CPU
NoiseDraw = Callable[[tuple[int, ...], torch.Generator, torch.dtype], Tensor]


def copy_scores(
    explainer: Explainer,
    model: nn.Module,
    x: Tensor,
    attribution: Tensor,
    target: Target,
    nr_samples: int,
    noise: NoiseDraw,
    score: CopyScore,
    seed: int | None,
    batch_size: int,
    progress: bool,
    desc: str,
) -> Tensor:
    """(N, nr_samples): ``score`` of every noisy copy; rows are (sample, copy) pairs, sample-major, in chunks."""
    x, attribution = checked_inputs(model, x, attribution, explainer)
    generator = torch.Generator().manual_seed(check_seed(seed))
    scores = torch.empty(len(x) * nr_samples, dtype=x.dtype, device=x.device)
    with borrowed(model):
        _, target = predict(model, x, target)
        parts = chunks(len(scores), batch_size)
        for rows in tqdm(parts, desc=desc, disable=not progress):
            sample = torch.arange(rows.start, rows.stop, device=x.device) // nr_samples
            inputs = x[sample]
            perturbed = inputs + noise(tuple(inputs.shape), generator, x.dtype).to(x.device)
            explained = explain(explainer, model, perturbed, target[sample], tuple(attribution.shape))
            scores[rows] = score(inputs, perturbed, attribution[sample], explained)
    return scores.view(len(x), nr_samples)


def check_nr_samples(nr_samples: int) -> int:
    return positive_int(nr_samples, "nr_samples", "noisy copies per sample")


def relative_change(inputs: Tensor, perturbed: Tensor, attribution: Tensor, explained: Tensor) -> Tensor:
    """||E(x') - A||_F / ||A||_F per row, the denominator 1 where ||A|| = 0 (as Captum)."""
    norm = attribution.flatten(1).norm(dim=1)
    return (explained - attribution).flatten(1).norm(dim=1) / torch.where(norm == 0, torch.ones_like(norm), norm)


class Sensitivity:
    """What MaxSensitivity and AvgSensitivity share: uniform noise in the L-infinity ball, relative change."""

    higher_is_better = False

    def __init__(
        self,
        explainer: Explainer,
        perturb_radius: float = 0.2,
        nr_samples: int = 200,
        seed: int | None = 0,
        batch_size: int = 64,
        progress: bool = True,
    ):
        self.explainer = check_explainer(explainer)
        self.perturb_radius = finite_number(perturb_radius, "perturb_radius (half-width of the uniform noise)", 0)
        self.nr_samples = check_nr_samples(nr_samples)
        self.seed = None if seed is None else check_seed(seed)
        self.batch_size = check_batch_size(batch_size)
        self.progress = progress

    def uniform(self, shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        return (2 * torch.rand(shape, generator=generator, dtype=dtype) - 1) * self.perturb_radius

    def changes(self, model: nn.Module, x: Tensor, attribution: Tensor, target: Target) -> Tensor:
        """(N, nr_samples): the relative change of the explanation for every noisy copy."""
        return copy_scores(self.explainer, model, x, attribution, target, self.nr_samples, self.uniform,
                           relative_change, self.seed, self.batch_size, self.progress, type(self).__name__)


class MaxSensitivity(Sensitivity):
    """max_j ||E(x + delta_j) - A|| / ||A||, delta_j uniform in [-r, r] (see the module docstring)."""

    def __call__(self, model: nn.Module, x: Tensor, attribution: Tensor, target: Target = None) -> MetricResult:
        """``target`` as for analyzers (None = the top class on x)."""
        return MetricResult(self.changes(model, x, attribution, target).amax(1))


class AvgSensitivity(Sensitivity):
    """mean_j ||E(x + delta_j) - A|| / ||A||, delta_j uniform in [-r, r] (see the module docstring)."""

    def __call__(self, model: nn.Module, x: Tensor, attribution: Tensor, target: Target = None) -> MetricResult:
        """``target`` as for analyzers (None = the top class on x)."""
        return MetricResult(self.changes(model, x, attribution, target).mean(1))


class LocalLipschitzEstimate:
    """max_j ||n(E(x + delta_j)) - n(A)|| / ||delta_j||, delta_j Gaussian (see the module docstring)."""

    higher_is_better = False

    def __init__(
        self,
        explainer: Explainer,
        perturb_std: float = 0.1,
        perturb_mean: float = 0.0,
        nr_samples: int = 200,
        normalise: bool = True,
        seed: int | None = 0,
        batch_size: int = 64,
        progress: bool = True,
    ):
        self.explainer = check_explainer(explainer)
        self.perturb_std = finite_number(perturb_std, "perturb_std (standard deviation of the noise)", 0)
        self.perturb_mean = finite_number(perturb_mean, "perturb_mean (mean of the noise)")
        self.nr_samples = check_nr_samples(nr_samples)
        self.normalise = bool(normalise)
        self.seed = None if seed is None else check_seed(seed)
        self.batch_size = check_batch_size(batch_size)
        self.progress = progress

    def gaussian(self, shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        return self.perturb_mean + self.perturb_std * torch.randn(shape, generator=generator, dtype=dtype)

    def lipschitz_ratio(self, inputs: Tensor, perturbed: Tensor, attribution: Tensor, explained: Tensor) -> Tensor:
        """||n(E(x')) - n(A)||_2 / (||x' - x||_2 + 1e-10) per row (Quantus's epsilon)."""
        if self.normalise:
            attribution, explained = normalise_by_max(attribution), normalise_by_max(explained)
        change = (explained - attribution).flatten(1).norm(dim=1)
        return change / ((perturbed - inputs).flatten(1).norm(dim=1) + 1e-10)

    def __call__(self, model: nn.Module, x: Tensor, attribution: Tensor, target: Target = None) -> MetricResult:
        """``target`` as for analyzers (None = the top class on x)."""
        ratios = copy_scores(self.explainer, model, x, attribution, target, self.nr_samples, self.gaussian,
                             self.lipschitz_ratio, self.seed, self.batch_size, self.progress,
                             type(self).__name__)
        return MetricResult(ratios.amax(1))
