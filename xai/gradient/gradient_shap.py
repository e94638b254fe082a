"""GradientSHAP (Lundberg & Lee 2017, as in Captum's ``GradientShap``) and Expected Gradients (Erion et al. 2021).

Both estimate the expected value of Integrated Gradients over a distribution of baselines by sampling:

    attribution(x) = 1/S sum_s (x~_s - b_s) * grad f(b_s + a_s (x~_s - b_s))

with, per step s, a baseline b_s drawn uniformly from the given set, a_s ~ U(0, 1) and x~_s = x + N(0, stdevs^2)
(GradientSHAP's optional noise; Expected Gradients has none). Captum's ``GradientShap`` computes the same sum
(its point a x~ + (1 - a) b equals ours up to rounding) with the draws made per (sample, step); here each step's
draws are shared by all samples of a batch, so a sample's explanation does not depend on the batch it came in
(as in ``SmoothGrad``). The summands of a sample sum to f(x~_s) - f(b_s) in expectation over a_s.
"""
import torch
from torch import Tensor, nn

from xai.analyzer import Analyzer, predict
from xai.gradient.batched import weighted_gradient_sum
from xai.gradient.deeplift import check_baseline_set, checked_against_input
from xai.gradient.smoothgrad import NoiseDraws
from xai.validation import check_batch_size, check_seed, finite_number, positive_int


class Draws:
    """The random choices of one call: baseline index and alpha per step, and a seed for the input noise."""

    def __init__(self, samples: int, baselines: int, seed: int):
        generator = torch.Generator(device="cpu").manual_seed(seed)
        self.index = torch.randint(0, baselines, (samples,), generator=generator)
        self.alpha = torch.rand(samples, generator=generator, dtype=torch.float64)
        self.noise_seed = int(torch.randint(0, 2**62, (), generator=generator))

    def noise(self, sample_shape: torch.Size, dtype: torch.dtype, device: torch.device) -> NoiseDraws:
        """Standard normal input noise per step (one draw per step, shared by the batch)."""
        return NoiseDraws(sample_shape, self.noise_seed, dtype, device)


class GradientSHAP(Analyzer):
    """Mean of (x~ - b) * gradient at b + a (x~ - b) over ``samples`` draws (see the module docstring).

    ``baselines``: a tensor (B, *sample_shape) to draw b from; ``stdevs``: the standard deviation of the Gaussian
    noise added to the input (0 = none, Captum's default). Seeded: ``seed=None`` draws a seed from torch's global
    generator. At most ``batch_size`` points go through the model at once.
    """

    def __init__(
        self,
        model: nn.Module,
        baselines: Tensor,
        samples: int = 50,
        stdevs: float = 0.0,
        seed: int | None = None,
        batch_size: int = 32,
    ):
        super().__init__(model)
        self.baselines = check_baseline_set(baselines)
        positive_int(samples, "samples", "number of baseline draws")
        self.stdevs = finite_number(stdevs, "stdevs (the input noise's standard deviation)", minimum=0)
        self.samples, self.seed = samples, check_seed(seed)
        self.batch_size = check_batch_size(batch_size)

    def draws(self) -> Draws:
        """This call's draws (a fresh seed from torch's global generator when ``seed`` is None)."""
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()).item())
        return Draws(self.samples, self.baselines.shape[0], seed)

    def _attribute(self, x, target):
        baselines = checked_against_input(self.baselines, x)
        output, resolved = predict(self.model, x, target)
        draws = self.draws()
        index = draws.index.to(x.device)
        alpha = draws.alpha.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
        noise = draws.noise(x.shape[1:], x.dtype, x.device) if self.stdevs > 0 else None

        def difference(step: Tensor, sample: Tensor) -> Tensor:
            """x~ - b for these (step, sample) pairs."""
            noisy = x[sample]
            if noise is not None:
                first = int(step[0])
                noisy = noisy + self.stdevs * noise.steps(first, int(step[-1]) + 1)[step - first]
            return noisy - baselines[index[step]]

        def point(step: Tensor, sample: Tensor) -> Tensor:
            return baselines[index[step]] + alpha[step] * difference(step, sample)

        weights = torch.full((self.samples,), 1.0 / self.samples, dtype=torch.float64)
        attribution = weighted_gradient_sum(
            self.model, point, weights, resolved, self.batch_size, desc=self.method, scale=difference
        )
        return attribution, output, resolved


class ExpectedGradients(GradientSHAP):
    """Expected Gradients (Erion et al. 2021): GradientSHAP without input noise, the baselines being data.

    ``baselines``: reference inputs drawn from the data (B, *sample_shape), e.g. a sample of training images.
    """

    def __init__(
        self, model: nn.Module, baselines: Tensor, samples: int = 50, seed: int | None = None, batch_size: int = 32
    ):
        super().__init__(model, baselines, samples=samples, stdevs=0.0, seed=seed, batch_size=batch_size)
