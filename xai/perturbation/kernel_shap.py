"""KernelSHAP (Lundberg & Lee 2017): Shapley values of feature groups as a weighted linear fit, equal to Captum 0.9's
``KernelShap`` (same draws, same weights, same regression).

The coalitions of a sample with K features: all features on, all off, then S - 2 draws, each of a size k in 1..K-1
with probability proportional to (K - 1) / (k (K - k)) and then a subset of that size uniformly (the Shapley kernel
(K - 1) / (C(K, k) k (K - k)) turned into a sampling distribution, so that every drawn coalition has weight 1).
The two end coalitions get weight 1e6 (Captum's stand-in for the kernel's infinite weight): the coefficients
nearly satisfy efficiency, sum_k coef_k = f(x) - f(baseline). The fit is weighted least squares with intercept
(Captum's ``SkLearnLinearRegression``). Frame, inputs and fit: ``xai.perturbation.surrogate``.
"""
import torch
from torch import Tensor, nn

from xai.perturbation.features import Features
from xai.perturbation.surrogate import Surrogate, weighted_least_squares

#: The weight of the all-on and all-off coalitions (Captum's ``KernelShap.inf_weight``).
END_WEIGHT = 1e6


def kernel_shap_coalitions(features: int, samples: int, generator: torch.Generator) -> Tensor:
    """(samples, features) bool: all on, all off, then coalitions drawn by size from the Shapley kernel."""
    sizes = torch.arange(1, features, dtype=torch.float64)
    size_probability = (features - 1) / (sizes * (features - sizes))
    drawn = max(samples - 2, 0)
    size = 1 + torch.multinomial(size_probability, drawn, replacement=True, generator=generator)
    order = torch.rand((drawn, features), generator=generator).argsort(1).argsort(1)  # a random rank per feature
    ends = torch.tensor([[True] * features, [False] * features])
    return torch.cat([ends, order < size[:, None]])[:samples]


class KernelSHAP(Surrogate):
    """Shapley values of feature groups (``features``: "slic", "grid", a mask or a callable, see ``xai.perturbation.features``)
    from ``samples`` coalitions per sample, the features switched off set to ``baseline``."""

    def __init__(self, model: nn.Module, features: Features = "slic", samples: int = 256, baseline: float = 0.0,
                 seed: int | None = None, batch_size: int = 64):
        super().__init__(model, features, samples, baseline, seed, batch_size)

    def draw(self, features, samples, generator):
        return kernel_shap_coalitions(features, samples, generator)

    def similarities(self, x, segments, coalitions, counts):
        size = coalitions.sum(2)
        end = (size == 0) | (size == counts[:, None])
        return torch.where(end, END_WEIGHT, 1.0).to(torch.float64)

    def fit(self, coalitions, scores, weights):
        return weighted_least_squares(coalitions, scores, weights)

    def _check_counts(self, counts):
        if (counts < 2).any():
            sample = int((counts < 2).nonzero()[0])
            raise ValueError(f"KernelSHAP needs at least 2 features per sample, sample {sample} has 1 (a flat image "
                             "gives one SLIC segment): use features='grid' or a mask with more segments")
