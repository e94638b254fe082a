"""LIME (Ribeiro et al. 2016) on feature groups, equal to Captum 0.9's ``Lime`` with its defaults (same draws, same
weights, same Lasso minimiser).

The coalitions of a sample with K features: S draws with each feature on with probability 1/2. A coalition's weight
is exp(-d^2 / (2 kernel_width^2)) with d = 1 - cos(x, switched input), the cosine taken over the whole input
(Captum's ``get_exp_kernel_similarity_function('cosine', kernel_width)``). The fit is the weighted Lasso with
intercept of Captum's default ``SkLearnLasso(alpha=0.01)`` (``alpha=0``: weighted least squares). Captum leaves the
Lasso to scikit-learn's coordinate descent at tol=1e-4; ours is its minimiser to float64 rounding. Frame, inputs and
fit: ``xai.perturbation.surrogate``.
"""
import torch
from torch import Tensor, nn

from xai.perturbation.features import Features
from xai.perturbation.surrogate import Surrogate, cosine_to_switched, weighted_lasso, weighted_least_squares
from xai.validation import finite_number


def lime_coalitions(features: int, samples: int, generator: torch.Generator) -> Tensor:
    """(samples, features) bool: each feature on with probability 1/2 (Captum's ``default_perturb_func``)."""
    return torch.rand((samples, features), generator=generator) < 0.5


class LIME(Surrogate):
    """A sparse local linear model of the target logit on feature groups (``features``: "slic", "grid", a mask or a
    callable, see ``xai.perturbation.features``) from ``samples`` coalitions per sample, switched-off features set to
    ``baseline``; ``alpha``: the Lasso's L1 weight (0: weighted least squares)."""

    def __init__(self, model: nn.Module, features: Features = "slic", samples: int = 256, kernel_width: float = 1.0,
                 alpha: float = 0.01, baseline: float = 0.0, seed: int | None = None, batch_size: int = 64):
        super().__init__(model, features, samples, baseline, seed, batch_size)
        self.kernel_width = finite_number(kernel_width, "kernel_width (of the cosine distance kernel)")
        if self.kernel_width <= 0:
            raise ValueError(f"kernel_width must be > 0 (the width of the kernel on cosine distances), got "
                             f"{kernel_width!r}")
        self.alpha = finite_number(alpha, "alpha (the Lasso's L1 weight)", minimum=0)

    def draw(self, features, samples, generator):
        return lime_coalitions(features, samples, generator)

    def similarities(self, x, segments, coalitions, counts):
        distance = 1 - cosine_to_switched(x.double(), segments, coalitions, self.baseline)
        return torch.exp(-distance ** 2 / (2 * self.kernel_width ** 2))

    def fit(self, coalitions, scores, weights):
        if self.alpha == 0:
            return weighted_least_squares(coalitions, scores, weights)
        return weighted_lasso(coalitions, scores, weights, self.alpha)
