"""Infidelity (Yeh et al. 2019), as ``captum.metrics.infidelity``.

For each sample, ``n_perturb_samples`` perturbations I ~ N(0, noise_std^2) of every input value (the default
perturbation; Captum's documented example) give

    infidelity = 1/n sum_k ( sum_j a_j I_kj - (f(x) - f(x - I_k)) )^2

the mean squared error between the attribution's linear prediction of each score change and the change. With
``normalize=True`` the attribution is first scaled by the best factor, beta = sum_k (a.I_k) d_k / sum_k (a.I_k)^2
(d_k the score change), as Captum does: the error then ignores the attribution's scale. Lower is better.
A one-channel attribution multiplies every channel of I (broadcast, as in Captum).

The noise is drawn on the CPU, sample after sample, one (n_perturb_samples, C, H, W) standard normal draw each from
a generator seeded with ``seed`` (None: fresh draws), so it does not depend on ``batch_size``.
"""
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from evaluation.common.inputs import check_metric_inputs
from evaluation.common.result import MetricResult
from evaluation.faithfulness.baselines import cpu_generator
from evaluation.faithfulness.perturbed_scores import perturbed_scores
from xai.model_guard import model_device
from xai.targets import Target
from xai.validation import check_batch_size, finite_number, positive_int


@dataclass(frozen=True)
class Infidelity:
    """Gaussian-noise infidelity (see the module docstring); ``softmax=False`` (the logit) matches Captum on the
    bare model. ``batch_size`` bounds the perturbed inputs per forward pass."""

    n_perturb_samples: int = 10
    noise_std: float = 0.003
    normalize: bool = False
    softmax: bool = False
    batch_size: int = 64
    seed: int | None = None
    progress: bool = True
    higher_is_better: ClassVar[bool] = False

    def __post_init__(self):
        positive_int(self.n_perturb_samples, "n_perturb_samples")
        if finite_number(self.noise_std, "noise_std") <= 0:
            raise ValueError(f"noise_std must be positive (the standard deviation of the noise), got {self.noise_std}")
        check_batch_size(self.batch_size)

    def __call__(self, model: nn.Module, x: Tensor, attribution: Tensor, target: Target = None) -> MetricResult:
        check_metric_inputs(model, x, attribution)
        n, k = x.shape[0], self.n_perturb_samples
        device = model_device(model)
        x_dev, a_dev = x.detach().to(device), attribution.detach().to(device=device, dtype=x.dtype)
        generator = cpu_generator(self.seed)
        drawn = torch.empty((0, *x.shape[1:]), dtype=x.dtype)  # rows drawn and not used yet
        predicted = torch.empty(n * k, dtype=x.dtype, device=device)  # a . I of each row

        def build(start: int, stop: int) -> tuple[Tensor, Tensor]:
            nonlocal drawn
            sample = torch.arange(start, stop, device=device) // k
            while drawn.shape[0] < stop - start:  # the next sample's draw
                draw = torch.randn((k, *x.shape[1:]), generator=generator, dtype=x.dtype)
                drawn = torch.cat([drawn, self.noise_std * draw])
            noise, drawn = drawn[: stop - start].to(device), drawn[stop - start :]
            predicted[start:stop] = (a_dev[sample] * noise).flatten(1).sum(1)
            return x_dev[sample] - noise, sample

        _, unperturbed, scores = perturbed_scores(
            model, x, target, self.softmax, n * k, build, self.batch_size, self.progress, "infidelity",
        )
        change = (unperturbed[:, None] - scores.view(n, k)).to(predicted.dtype)
        predicted = predicted.view(n, k)
        if self.normalize:
            power = (predicted * predicted).sum(1, keepdim=True)
            beta = (predicted * change).sum(1, keepdim=True) / torch.where(power == 0, 1.0, power)
            predicted = beta * predicted
        return MetricResult(((predicted - change) ** 2).mean(1).to(x.device))
