"""Integrated Gradients (Sundararajan et al. 2017): (x - x') times the path integral of the gradient.

IG_i(x) = (x_i - x'_i) * integral_0^1 d f(x' + a (x - x')) / d x_i da, approximated by a quadrature over
``steps`` points of the straight path from the baseline x' to x. By the fundamental theorem of calculus
a sample's attributions sum to f(x) - f(x') up to the quadrature error (completeness).

Quadrature schemes (names as in Captum), with n = ``steps``:

- ``"riemann_trapezoid"`` (default): a = 0, 1/(n-1), ..., 1; weights 1/(n-1), the two ends halved
  (weights sum to 1). Captum's scheme of the same name uses weights 1/n on the same points, so its
  result is ours times (n-1)/n.
- ``"riemann_right"`` (the paper's sum): a = 1/n, ..., 1; weights 1/n.
- ``"riemann_left"``: a = 0, ..., 1 - 1/n; ``"riemann_middle"``: a = (k + 1/2)/n; weights 1/n.
- ``"gausslegendre"``: Gauss-Legendre nodes and weights on [0, 1] (Captum's default).
"""
import numbers

import numpy as np
import torch
from torch import Tensor, nn

from xai.analyzer import Analyzer, predict
from xai.gradient.batched import weighted_gradient_sum
from xai.validation import check_batch_size, finite_number, positive_int

SCHEMES = ("riemann_trapezoid", "riemann_right", "riemann_left", "riemann_middle", "gausslegendre")
Baseline = None | float | Tensor


def quadrature(scheme: str, steps: int) -> tuple[Tensor, Tensor]:
    """Points a in [0, 1] on the path and their weights, both float64 of shape (steps,)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")
    if scheme == "riemann_trapezoid" and steps < 2:
        raise ValueError("riemann_trapezoid needs steps >= 2 (both ends of the path)")
    n = steps
    if scheme == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy(0.5 * (nodes + 1.0)), torch.from_numpy(0.5 * weights)
    k = torch.arange(n, dtype=torch.float64)
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if scheme == "riemann_trapezoid":
        weights = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return k / (n - 1), weights
    offset = {"riemann_right": 1.0, "riemann_left": 0.0, "riemann_middle": 0.5}[scheme]
    return (k + offset) / n, weights


def resolve_baseline(baseline: Baseline, x: Tensor) -> Tensor:
    """The baseline (checked by ``check_baseline``) as a tensor of x's shape: None = zeros, a number = constant,
    or a tensor broadcastable to x."""
    if baseline is None:
        return torch.zeros_like(x)
    if not isinstance(baseline, Tensor):
        return torch.full_like(x, float(baseline))
    try:
        shape = torch.broadcast_shapes(baseline.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(
            f"baseline has shape {tuple(baseline.shape)}, which does not broadcast to the input's shape "
            f"{tuple(x.shape)}: give one of shape {tuple(x.shape)}, {tuple(x.shape[1:])} or a number"
        )
    return baseline.detach().to(device=x.device, dtype=x.dtype).expand_as(x)


def check_baseline(baseline: Baseline) -> None:
    """What can be checked without the input: the type, and no NaN or Inf."""
    if baseline is None or isinstance(baseline, Tensor) and torch.isfinite(baseline).all():
        return
    if isinstance(baseline, Tensor):
        raise ValueError("baseline contains NaN or Inf values: give a finite tensor, a number, or None for zeros")
    if isinstance(baseline, bool) or not isinstance(baseline, numbers.Real):
        raise TypeError(f"baseline must be None, a number or a Tensor, got {type(baseline).__name__}")
    finite_number(baseline, "baseline")


class IntegratedGradients(Analyzer):
    """(x - baseline) times the mean gradient along the straight path from the baseline to x.

    ``baseline`` defaults to zeros; ``scheme`` picks the quadrature (see the module docstring), kept in
    ``points`` (positions a in [0, 1] on the path) and ``weights``; at most ``batch_size`` path points
    go through the model at once. ``fold_batchnorm=True``: as in ``SmoothGrad``, an opt-in speed-up
    whose rounding can break ties (flat baselines make many) differently from the model itself.
    """

    def __init__(
        self,
        model: nn.Module,
        steps: int = 50,
        baseline: Baseline = None,
        scheme: str = "riemann_trapezoid",
        batch_size: int = 32,
        fold_batchnorm: bool = False,
    ):
        super().__init__(model)
        positive_int(steps, "steps", "points on the path")
        check_baseline(baseline)
        self.points, self.weights = quadrature(scheme, steps)
        self.steps, self.baseline, self.scheme = steps, baseline, scheme
        self.batch_size = check_batch_size(batch_size)
        self.fold_batchnorm = bool(fold_batchnorm)

    def _attribute(self, x, target):
        baseline = resolve_baseline(self.baseline, x)
        output, resolved = predict(self.model, x, target)
        difference = x - baseline
        points = self.points.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))

        def path(step: Tensor, sample: Tensor) -> Tensor:
            return baseline[sample] + points[step] * difference[sample]

        grad = weighted_gradient_sum(
            self.model, path, self.weights, resolved, self.batch_size, desc="IG", fold=self.fold_batchnorm
        )
        return difference * grad, output, resolved
